//! What a CEL program may cost, for filters and the dedupe key alike.
//!
//! At compile time: the source's length, the depth and size of its tree (the `cel`
//! crate evaluates by recursion, so a deep tree overflows the stack of whatever thread
//! evaluates it), and regex literals. Compiling itself runs on a thread with a large,
//! known stack, so that a deep expression is refused rather than crashing the process.
//!
//! At evaluation time, for programs with comprehensions (`all`, `exists`, `map`,
//! `filter`, …): a bound on the work one evaluation can do, computed from the program
//! and the event's sizes before evaluation starts. An evaluation whose bound passes
//! [`BUDGET`] is not run: it is an evaluation error for that subscription. A program
//! whose bound passes the budget for the smallest event is refused when it compiles.
//!
//! The unit of work is one CEL value visited or built (a string counts one per 16 bytes).
//! The bound is an upper bound for the standard library: collections come from the
//! event, from literals, from `+` or from comprehensions, and none of these can make a
//! collection larger than what they are built from.

use std::cell::OnceCell;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::Program;

use super::activation::ParsedData;
use crate::event::Event;

/// The longest expression accepted, in bytes.
pub const MAX_SOURCE_BYTES: usize = 16 * 1024;

/// The deepest expression tree accepted. Evaluation recurses about once per level:
/// 64 levels took under 256 KiB of stack in a release build and 2-4 MiB in a debug
/// build (`deep_programs_evaluate_within_the_evaluation_stack`).
pub const MAX_DEPTH: usize = 64;

/// The stack of the threads that evaluate CEL (the routers' threads and the runtime's
/// workers): room for [`MAX_DEPTH`] levels in any build.
pub const EVAL_STACK: usize = 8 << 20;

/// The most nodes an expression tree may have.
pub const MAX_NODES: usize = 4096;

/// The most comprehensions nested in one another. The work bound walks a loop's body
/// twice per level of nesting, so it takes 2^levels walks: 16 at most.
pub const MAX_LOOP_NESTING: usize = 4;

/// An expression without comprehensions does work in proportion to the event's size:
/// at most this many times it (a filter that compares a few dozen fields stays well
/// inside)...
const MAX_COST_PER_WEIGHT: f64 = 1024.0;

/// ...and builds no value heavier than this many times the event (`+` doubles a
/// string at each level of a balanced tree).
const MAX_PEAK_PER_WEIGHT: f64 = 16.0;

/// The most work one evaluation may do, in units (about 0.1 s of evaluation in a
/// release build).
pub const BUDGET: f64 = 1_000_000.0;

/// Compiling may recurse once per level of the source's nesting, before the depth
/// limit can be checked: a thread with this much stack compiles every expression of
/// up to [`MAX_SOURCE_BYTES`].
const COMPILE_STACK: usize = 256 << 20;

/// Why an expression was refused: the 1-based column and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub column: usize,
    pub message: String,
}

/// A compiled program and what its evaluation may cost.
pub struct Checked {
    pub program: Program,
    /// Whether it has comprehensions, whose cost depends on the event.
    pub loops: bool,
}

/// Compiles `source` for the shared environment ([`super::activation::env`]) on a
/// thread with a large stack, then holds it to the limits above.
pub fn compile(source: &str) -> Result<Checked, Refused> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(Refused {
            column: 1,
            message: format!(
                "the expression is {} bytes long; the limit is {MAX_SOURCE_BYTES}",
                source.len()
            ),
        });
    }
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("cel-compile".into())
            .stack_size(COMPILE_STACK)
            .spawn_scoped(s, || {
                let program = super::activation::env().compile(source).map_err(|e| Refused {
                    column: e
                        .errors
                        .first()
                        .map_or(1, |e| usize::try_from(e.pos.1).unwrap_or(0) + 1),
                    message: e
                        .errors
                        .iter()
                        .map(|e| e.msg.clone())
                        .collect::<Vec<_>>()
                        .join("; "),
                })?;
                let loops = check_shape(&program)?;
                if !loops {
                    // Without comprehensions the bound is linear in the event's weight:
                    // checked once here for any event.
                    const W: f64 = 1_048_576.0;
                    let b = bound(
                        program.expression(),
                        &InputSize {
                            longest: 1.0,
                            weight: W,
                        },
                        None,
                        &mut Vec::new(),
                    );
                    if b.cost > MAX_COST_PER_WEIGHT * W || b.peak > MAX_PEAK_PER_WEIGHT * W {
                        return Err(Refused {
                            column: 1,
                            message: format!(
                                "the expression is too costly: it may build values {:.0} times the size of the event (at most {MAX_PEAK_PER_WEIGHT:.0}) or do {:.0} times its size in work (at most {MAX_COST_PER_WEIGHT:.0})",
                                b.peak / W,
                                b.cost / W
                            ),
                        });
                    }
                }
                if loops {
                    let least = bound(
                        program.expression(),
                        &InputSize::SMALLEST,
                        None,
                        &mut Vec::new(),
                    );
                    if least.cost > BUDGET {
                        return Err(Refused {
                            column: 1,
                            message: format!(
                                "the expression is too costly: even for the smallest event its comprehensions may take {:.0} units of work, over the budget of {BUDGET:.0}",
                                least.cost
                            ),
                        });
                    }
                }
                Ok(Checked { program, loops })
            })
            .map_err(|e| Refused {
                column: 1,
                message: format!("cannot start a thread to compile the expression: {e}"),
            })?
            .join()
            .unwrap_or_else(|_| {
                Err(Refused {
                    column: 1,
                    message: "the expression could not be compiled".into(),
                })
            })
    })
}

/// Depth, size and regex literals, walked without recursion; whether the program has
/// comprehensions.
fn check_shape(program: &Program) -> Result<bool, Refused> {
    let refuse = |message: String| Refused { column: 1, message };
    let mut stack: Vec<(&IdedExpr, usize, usize)> = vec![(program.expression(), 1, 0)];
    let (mut nodes, mut loops) = (0usize, false);
    while let Some((e, depth, nesting)) = stack.pop() {
        nodes += 1;
        let nesting = nesting + usize::from(matches!(e.expr, Expr::Comprehension(_)));
        if nesting > MAX_LOOP_NESTING {
            return Err(refuse(format!(
                "the expression nests more than {MAX_LOOP_NESTING} comprehensions (all, exists, map, filter) in one another"
            )));
        }
        if depth > MAX_DEPTH {
            return Err(refuse(format!(
                "the expression nests deeper than {MAX_DEPTH} levels"
            )));
        }
        if nodes > MAX_NODES {
            return Err(refuse(format!(
                "the expression has more than {MAX_NODES} parts"
            )));
        }
        if let Expr::Call(call) = &e.expr {
            if call.func_name == "matches" {
                let pattern = match (call.target.is_some(), call.args.as_slice()) {
                    (true, [p]) | (false, [_, p]) => Some(p),
                    _ => None,
                };
                if let Some(Expr::Literal(LiteralValue::String(p))) = pattern.map(|p| &p.expr) {
                    if let Err(err) = super::activation::cached_regex(p.inner()) {
                        let column = program
                            .source_info()
                            .offset_for(e.id)
                            .map_or(1, |(start, _)| start as usize + 1);
                        return Err(Refused {
                            column,
                            message: format!("'{}' is not a valid regex: {err}", p.inner()),
                        });
                    }
                }
            }
        }
        loops |= matches!(e.expr, Expr::Comprehension(_));
        stack.extend(children(e).into_iter().map(|c| (c, depth + 1, nesting)));
    }
    Ok(loops)
}

fn children(e: &IdedExpr) -> Vec<&IdedExpr> {
    match &e.expr {
        Expr::Call(call) => call.target.iter().map(|t| &**t).chain(&call.args).collect(),
        Expr::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
        Expr::List(list) => list.elements.iter().collect(),
        Expr::Map(map) => entries(&map.entries),
        Expr::Struct(s) => entries(&s.entries),
        Expr::Select(select) => vec![&*select.operand],
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
    }
}

fn entries(entries: &[cel::common::ast::IdedEntryExpr]) -> Vec<&IdedExpr> {
    entries
        .iter()
        .flat_map(|e| match &e.expr {
            EntryExpr::MapEntry(m) => vec![&m.key, &m.value],
            EntryExpr::StructField(f) => vec![&f.value],
        })
        .collect()
}

/// The sizes of one event that bound what an evaluation over it can do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputSize {
    /// The most elements any collection of the event has (`data`'s lists and maps,
    /// the attributes).
    pub longest: f64,
    /// The weight of everything the event holds, in units.
    pub weight: f64,
}

impl InputSize {
    /// An event with one small attribute and no data.
    pub const SMALLEST: InputSize = InputSize {
        longest: 1.0,
        weight: 1.0,
    };

    /// Measures `event` and its parsed `data`.
    pub fn of(event: &Event, data: Option<&ParsedData>) -> InputSize {
        let mut size = InputSize {
            longest: event.attributes().len() as f64,
            weight: event
                .attributes()
                .iter()
                .map(|(n, v)| 2.0 + string_weight(n.len() + v.text_len()))
                .sum(),
        };
        match data {
            Some(ParsedData::Json(v)) => {
                let mut stack = vec![v];
                while let Some(v) = stack.pop() {
                    size.weight += 1.0;
                    match v {
                        serde_json::Value::String(s) => size.weight += string_weight(s.len()),
                        serde_json::Value::Array(a) => {
                            size.longest = size.longest.max(a.len() as f64);
                            stack.extend(a);
                        }
                        serde_json::Value::Object(o) => {
                            size.longest = size.longest.max(o.len() as f64);
                            size.weight +=
                                o.keys().map(|k| 1.0 + string_weight(k.len())).sum::<f64>();
                            stack.extend(o.values());
                        }
                        _ => {}
                    }
                }
            }
            Some(ParsedData::Text(s)) => size.weight += 1.0 + string_weight(s.len()),
            Some(ParsedData::Bytes(b)) => size.weight += 1.0 + string_weight(b.len()),
            None => {}
        }
        size
    }
}

fn string_weight(bytes: usize) -> f64 {
    bytes as f64 / 16.0
}

/// An event and its parsed data, with its sizes measured at most once, when a program
/// with comprehensions first needs them.
pub struct Input<'a> {
    pub event: &'a Event,
    pub data: Option<&'a ParsedData>,
    sizes: OnceCell<InputSize>,
}

impl<'a> Input<'a> {
    pub fn new(event: &'a Event, data: Option<&'a ParsedData>) -> Self {
        Input {
            event,
            data,
            sizes: OnceCell::new(),
        }
    }

    pub fn sizes(&self) -> InputSize {
        *self
            .sizes
            .get_or_init(|| InputSize::of(self.event, self.data))
    }
}

/// Checks a program with comprehensions against the budget for one event.
pub fn within_budget(program: &Program, input: &Input) -> Result<(), String> {
    let data = match input.data {
        Some(ParsedData::Json(v)) => Some(v),
        _ => None,
    };
    let b = bound(program.expression(), &input.sizes(), data, &mut Vec::new());
    if b.cost > BUDGET {
        return Err(format!(
            "not evaluated: for this event the expression may take {:.0} units of work, over the budget of {BUDGET:.0}",
            b.cost
        ));
    }
    Ok(())
}

/// Bounds on one expression's value and the work of computing it.
#[derive(Debug, Clone, Copy)]
struct Bound {
    /// The most elements of any collection in the value.
    longest: f64,
    /// The value's weight.
    weight: f64,
    /// The work of computing it.
    cost: f64,
    /// The heaviest value built on the way, this one included.
    peak: f64,
}

const SCALAR: Bound = Bound {
    longest: 1.0,
    weight: 1.0,
    cost: 1.0,
    peak: 1.0,
};

impl Bound {
    /// `self`, its peak raised to its own weight and to what `parts` built.
    fn built_from(mut self, parts: &[Bound]) -> Bound {
        self.peak = parts.iter().fold(self.weight, |m, p| m.max(p.peak));
        self
    }
}

/// A comprehension variable: its name, its bound, and, when it iterates over the keys
/// of a map that the event's data holds, that map's expression.
type Var<'e> = (&'e str, Bound, Option<&'e IdedExpr>);

/// The bound of `e` with `scope` binding comprehension variables; `data` is the event's
/// JSON data when it has some (at evaluation time). Recursion is bounded by
/// [`MAX_DEPTH`], checked at compile time.
fn bound<'e>(
    e: &'e IdedExpr,
    input: &InputSize,
    data: Option<&serde_json::Value>,
    scope: &mut Vec<Var<'e>>,
) -> Bound {
    let text = |bytes: usize| {
        let weight = 1.0 + string_weight(bytes);
        Bound {
            weight,
            peak: weight,
            ..SCALAR
        }
    };
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => text(s.inner().len()),
        Expr::Literal(LiteralValue::Bytes(b)) => text(b.inner().len()),
        Expr::Literal(_) | Expr::Unspecified => SCALAR,
        // A variable is read, not built: its weight is not this program's peak.
        Expr::Ident(name) => match scope.iter().rev().find(|(n, _, _)| n == name) {
            Some((_, b, _)) => Bound {
                cost: 1.0,
                peak: 1.0,
                ..*b
            },
            None => Bound {
                longest: input.longest,
                weight: input.weight,
                cost: 1.0,
                peak: 1.0,
            },
        },
        Expr::Select(select) => {
            let operand = bound(&select.operand, input, data, scope);
            if select.test {
                Bound {
                    cost: operand.cost + 1.0,
                    peak: operand.peak,
                    ..SCALAR
                }
            } else {
                Bound {
                    cost: operand.cost + 1.0,
                    ..operand
                }
            }
        }
        Expr::List(_) | Expr::Map(_) | Expr::Struct(_) => {
            let parts: Vec<Bound> = children(e)
                .into_iter()
                .map(|c| bound(c, input, data, scope))
                .collect();
            let n = parts.len() as f64;
            Bound {
                longest: parts.iter().fold(n, |m, p| m.max(p.longest)),
                weight: n + parts.iter().map(|p| p.weight).sum::<f64>(),
                cost: n + parts.iter().map(|p| p.cost + p.weight).sum::<f64>(),
                peak: 0.0,
            }
            .built_from(&parts)
        }
        Expr::Call(call) => {
            // `m[k]` where `k` iterates over the keys of the map `m`: the value at the
            // key, the entry the loop is at, bounded as the element is (the entries'
            // weights add up to at most the map's).
            if let (true, [operand, Expr::Ident(k)]) = (
                call.func_name == "_[_]",
                call.args
                    .iter()
                    .map(|a| &a.expr)
                    .collect::<Vec<_>>()
                    .as_slice(),
            ) {
                let entry = scope.iter().rev().find(|(n, _, _)| n == k);
                if let Some((_, element, Some(range))) = entry {
                    if same_path(operand, &range.expr) {
                        let (element, lookup) =
                            (*element, bound(&call.args[0], input, data, scope));
                        return Bound {
                            cost: lookup.cost + 1.0 + element.weight,
                            peak: lookup.peak,
                            ..element
                        };
                    }
                }
            }
            let parts: Vec<Bound> = children(e)
                .into_iter()
                .map(|c| bound(c, input, data, scope))
                .collect();
            let cost: f64 = 1.0 + parts.iter().map(|p| p.cost).sum::<f64>();
            let touched: f64 = parts.iter().map(|p| p.weight).sum();
            let most = |f: fn(&Bound) -> f64| parts.iter().map(f).fold(1.0, f64::max);
            let b = match call.func_name.as_str() {
                // Concatenation copies both sides; appending to a comprehension's
                // accumulator (how `map` and `filter` build their result) copies only the
                // new part.
                "_+_" => {
                    let appends = matches!(
                        call.args.first().map(|a| &a.expr),
                        Some(Expr::Ident(n)) if n.starts_with('@')
                    );
                    let copied = if appends {
                        parts.get(1).map_or(0.0, |p| p.weight)
                    } else {
                        touched
                    };
                    Bound {
                        longest: parts.iter().map(|p| p.longest).sum(),
                        weight: touched,
                        cost: cost + copied,
                        peak: 0.0,
                    }
                }
                "_&&_" | "_||_" | "!_" | "_?_:_" => Bound {
                    longest: most(|p| p.longest),
                    weight: most(|p| p.weight),
                    cost,
                    peak: 0.0,
                },
                // Indexing, conversions and the other functions yield at most what they
                // are given and may read all of it.
                _ => Bound {
                    longest: most(|p| p.longest),
                    weight: most(|p| p.weight),
                    cost: cost + touched,
                    peak: 0.0,
                },
            };
            // An appended accumulator's weight is counted where the loop sums it.
            let b = b.built_from(&parts);
            if call.func_name == "_+_"
                && matches!(call.args.first().map(|a| &a.expr), Some(Expr::Ident(n)) if n.starts_with('@'))
            {
                Bound {
                    peak: parts.iter().fold(0.0, |m, p| m.max(p.peak)),
                    ..b
                }
            } else {
                b
            }
        }
        Expr::Comprehension(c) => {
            let range = bound(&c.iter_range, input, data, scope);
            let init = bound(&c.accu_init, input, data, scope);
            let map_keys = resolve(&c.iter_range.expr, data)
                .is_some_and(serde_json::Value::is_object)
                .then_some(&c.iter_range);
            let iterations = range.longest;
            // The step with the element weighing nothing, and with it weighing the whole
            // range: the bound is convex in the element's weight (sums, products and
            // maxima of non-negative terms), and the elements' weights add up to at most
            // the range's, so the iterations together cost at most
            // iterations·light + (heavy − light).
            let step = |weight: f64, scope: &mut Vec<Var<'e>>| {
                let element = Bound {
                    longest: range.longest,
                    weight,
                    cost: 1.0,
                    peak: 1.0,
                };
                let before = scope.len();
                scope.push((c.iter_var.as_str(), element, map_keys));
                if let Some(v) = &c.iter_var2 {
                    scope.push((v.as_str(), element, None));
                }
                scope.push((
                    c.accu_var.as_str(),
                    Bound {
                        longest: iterations.max(init.longest),
                        weight: 0.0,
                        cost: 1.0,
                        peak: 1.0,
                    },
                    None,
                ));
                let cond = bound(&c.loop_cond, input, data, scope);
                let step = bound(&c.loop_step, input, data, scope);
                scope.truncate(before);
                (cond.cost + step.cost, step, cond.peak)
            };
            let (light, light_step, _) = step(0.0, scope);
            let (heavy, heavy_step, cond_peak) = step(range.weight, scope);
            let weight = init.weight
                + iterations * light_step.weight
                + (heavy_step.weight - light_step.weight);
            let accumulated = Bound {
                // An element of the result may be as long as what one step yields.
                longest: (init.longest + iterations).max(heavy_step.longest),
                weight,
                cost: 1.0,
                peak: 1.0,
            };
            scope.push((c.accu_var.as_str(), accumulated, None));
            let result = bound(&c.result, input, data, scope);
            scope.pop();
            Bound {
                longest: result.longest,
                weight: result.weight,
                cost: range.cost + init.cost + iterations * light + (heavy - light) + result.cost,
                peak: [
                    range.peak,
                    init.peak,
                    heavy_step.peak,
                    cond_peak,
                    weight,
                    result.peak,
                ]
                .into_iter()
                .fold(0.0, f64::max),
            }
        }
    }
}

/// Whether `a` and `b` are the same path of field selections from one variable
/// (`data.x.y`), ids aside.
fn same_path(a: &Expr, b: &Expr) -> bool {
    match (a, b) {
        (Expr::Ident(x), Expr::Ident(y)) => x == y,
        (Expr::Select(x), Expr::Select(y)) => {
            !x.test && !y.test && x.field == y.field && same_path(&x.operand.expr, &y.operand.expr)
        }
        _ => false,
    }
}

/// The value a path of field selections from `data` (`data.x.y`) reads in the event's
/// JSON data, when it is one and is there.
fn resolve<'d>(e: &Expr, data: Option<&'d serde_json::Value>) -> Option<&'d serde_json::Value> {
    match e {
        Expr::Ident(name) if name == "data" => data,
        Expr::Select(s) if !s.test => resolve(&s.operand.expr, data)?.get(&s.field),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(source: &str) -> Result<Checked, Refused> {
        compile(source)
    }

    fn cost(source: &str, longest: f64, weight: f64) -> f64 {
        let c = compiled(source).unwrap();
        bound(
            c.program.expression(),
            &InputSize { longest, weight },
            None,
            &mut Vec::new(),
        )
        .cost
    }

    #[test]
    fn limits_are_named_when_an_expression_is_refused() {
        let long = vec!["1"; 2_000].join(" + ") + " > 0";
        let e = compiled(&long).err().unwrap();
        assert!(e.message.contains("deeper than 64"), "{}", e.message);
        let longer = vec!["1"; 8_000].join(" + ") + " > 0";
        assert!(compiled(&longer).err().unwrap().message.contains("16384"));
        let wide = format!("[{}].size() > 0", vec!["1"; 5_000].join(","));
        assert!(compiled(&wide)
            .err()
            .unwrap()
            .message
            .contains("4096 parts"));
        let e = compiled("type.matches('(')").err().unwrap();
        assert!(e.message.contains("not a valid regex"), "{}", e.message);
        assert_eq!(e.column, 13);
        let l = "[1,2,3,4,5,6,7,8,9,10]";
        let mut deep = "x0".to_string();
        for i in 0..8 {
            deep = format!("{l}.map(x{i}, {deep})");
        }
        let e = compiled(&format!("size({deep}) > 0")).err().unwrap();
        assert!(e.message.contains("comprehensions"), "{}", e.message);
        // Forty elements four deep: 2.56 million steps for any event.
        let forty = format!("[{}]", vec!["1"; 40].join(","));
        let mut wide = "x0".to_string();
        for i in 0..4 {
            wide = format!("{forty}.map(x{i}, {wide})");
        }
        let e = compiled(&format!("size({wide}) > 0")).err().unwrap();
        assert!(e.message.contains("too costly"), "{}", e.message);
        assert!(compiled(&format!("{l}.all(a, {l}.all(b, a + b > 0))")).is_ok());
        let mut nested = "true".to_string();
        for i in 0..5 {
            nested = format!("[1].all(a{i}, {nested})");
        }
        let e = compiled(&nested).err().unwrap();
        assert!(
            e.message.contains("more than 4 comprehensions"),
            "{}",
            e.message
        );
        // Without comprehensions: a balanced tree of concatenations doubles the data at
        // each level.
        let mut doubled = "data.s".to_string();
        for _ in 0..10 {
            doubled = format!("({doubled} + {doubled})");
        }
        let e = compiled(&format!("size({doubled}) > 0")).err().unwrap();
        assert!(e.message.contains("too costly"), "{}", e.message);
        let clauses: Vec<String> = (0..60).map(|i| format!("data.f{i} == 'v'")).collect();
        assert!(
            compiled(&clauses.join(" || ")).is_ok(),
            "sixty comparisons are fine"
        );
        assert!(compiled(r#"source + "\n" + id"#).is_ok());
    }

    #[test]
    fn the_bound_grows_with_the_event_as_the_work_does() {
        let single = cost("data.items.exists(i, i.name == 'x')", 1000.0, 5000.0);
        // One pass over a thousand elements: thousands of units, not millions.
        assert!((1_000.0..100_000.0).contains(&single), "{single}");
        let nested = cost(
            "data.items.exists(i, data.items.exists(j, i == j))",
            1000.0,
            5000.0,
        );
        assert!(nested > 1_000_000.0, "{nested}");
        // A list of the whole input for each element weighs input × elements.
        let copies = cost("size(data.items.map(i, data.items)) > 0", 1000.0, 5000.0);
        assert!(copies > 1_000_000.0, "{copies}");
        // The elements of a mapped list keep their length: nesting over one of them
        // costs as nesting over the input does.
        let hidden = cost(
            "[0].map(i, data.items)[0].exists(x, data.items.exists(y, y < 0))",
            3000.0,
            15000.0,
        );
        assert!(hidden > 1_000_000.0, "{hidden}");
        // A typical Tekton filter over a PipelineRun stays far inside the budget.
        let tekton = cost(
            "data.pipelineRun.status.childReferences.exists(c, c.pipelineTaskName == 'deploy' && c.kind == 'TaskRun')",
            40.0,
            3000.0,
        );
        assert!(tekton < BUDGET / 10.0, "{tekton}");
    }

    #[test]
    fn deep_programs_evaluate_within_the_evaluation_stack() {
        // The depth limit counts the comparison too.
        let deep = vec!["1"; MAX_DEPTH - 1].join(" + ") + " > 0";
        let c = compiled(&deep).unwrap();
        let ok = std::thread::Builder::new()
            .stack_size(EVAL_STACK)
            .spawn(move || {
                let ctx = super::super::activation::base();
                c.program.execute(&ctx).is_ok()
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(ok);
    }

    #[test]
    fn a_map_read_at_the_key_its_loop_is_at_costs_the_entry_not_the_map() {
        let program = compiled("data.m.map(k, data.m[k].x + 'y').size() > 0")
            .unwrap()
            .program;
        let entries: serde_json::Map<String, serde_json::Value> = (0..200)
            .map(|i| (format!("k{i}"), serde_json::json!({"x": "v".repeat(64)})))
            .collect();
        let event = crate::event::json::decode_event(&bytes::Bytes::from(
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#,
        ))
        .unwrap();
        let work = |m: serde_json::Value| {
            let data = ParsedData::Json(serde_json::json!({ "m": m }));
            let input = Input::new(&event, Some(&data));
            bound(
                program.expression(),
                &input.sizes(),
                match &data {
                    ParsedData::Json(v) => Some(v),
                    _ => None,
                },
                &mut Vec::new(),
            )
            .cost
        };
        let as_map = work(serde_json::Value::Object(entries.clone()));
        // The same entries as a list: `data.m[k]` there is no read at the loop's key,
        // and keeps the bound of a read that may touch all of `data`.
        let as_list = work(serde_json::Value::Array(entries.into_values().collect()));
        assert!(as_map * 10.0 < as_list, "{as_map} vs {as_list}");
    }
}
