//! The per-event CEL activation: one inner scope of a base context built once, holding
//! exactly the variables some filter reads. Attributes are borrowed from the event, not
//! copied; `data` is parsed at most once per event, and only when a filter reads it.

use std::collections::HashMap;
use std::sync::Arc;

use cel::common::types::{
    CelBool, CelBytes, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString,
    CelTimestamp, CelUInt,
};
use cel::common::value::Val;
use cel::{Context, Env};

use crate::event::{is_json_media_type, AttrValue, Data, Event};

/// What the filters of a set read, so that an activation binds only that.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// Attribute names read as variables.
    pub attributes: Vec<String>,
    /// Whether some filter reads the `attributes` map.
    pub attribute_map: bool,
    /// Whether some filter reads `data`.
    pub data: bool,
}

impl Needs {
    /// Adds the variables one program reads.
    pub fn add(&mut self, variables: &[String]) {
        for v in variables {
            match v.as_str() {
                "data" => self.data = true,
                "attributes" => self.attribute_map = true,
                name => {
                    if !self.attributes.iter().any(|a| a == name) {
                        self.attributes.push(name.to_string());
                    }
                }
            }
        }
    }
}

/// The shared CEL environment, built once per process: the standard library, with
/// `matches` backed by [`cached_regex`] (the `cel` crate's own compiles its pattern on
/// every call, ~50 µs; its `regex` feature is off so that this one takes the name).
pub fn env() -> Arc<Env> {
    static ENV: std::sync::OnceLock<Arc<Env>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Env::stdlib();
        // Registering into a fresh stdlib cannot collide: its own `matches` is compiled out.
        let _ = cel::add_overload!(env, fn matches_global: (CelString, CelString) -> Result<CelBool>, name = "matches", id = "matches");
        let _ = cel::add_member_overload!(env, fn matches: (CelString, CelString) -> Result<CelBool>);
        Arc::new(env)
    })
    .clone()
}

/// Patterns kept compiled; filters hold literal patterns, so this bounds a set that
/// is small in practice. Past it the cache starts over rather than grow.
const REGEX_CACHE: usize = 1024;

/// Compiles a pattern once per process.
pub fn cached_regex(pattern: &str) -> Result<Arc<regex::Regex>, regex::Error> {
    static CACHE: std::sync::OnceLock<std::sync::Mutex<HashMap<String, Arc<regex::Regex>>>> =
        std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(r) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(pattern) {
        return Ok(r.clone());
    }
    // A pattern can come from event data; cap what one compiled pattern may take so
    // that the cache's 1024 entries stay small (the default cap is 10 MiB each).
    let compiled = Arc::new(
        regex::RegexBuilder::new(pattern)
            .size_limit(1 << 20)
            .build()?,
    );
    let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= REGEX_CACHE {
        map.clear();
    }
    map.insert(pattern.to_string(), compiled.clone());
    Ok(compiled)
}

fn matches(this: &CelString<'_>, pattern: &CelString<'_>) -> Result<CelBool, cel::ExecutionError> {
    cached_regex(pattern.inner())
        .map(|re| CelBool::from(re.is_match(this.inner())))
        .map_err(|e| cel::ExecutionError::FunctionError {
            function: "matches".to_string(),
            message: format!("'{}' is not a valid regex: {e}", pattern.inner()),
        })
}

fn matches_global(
    this: &CelString<'_>,
    pattern: &CelString<'_>,
) -> Result<CelBool, cel::ExecutionError> {
    matches(this, pattern)
}

/// The base context every activation is an inner scope of.
pub fn base() -> Context<'static, 'static> {
    Context::with_env(env())
}

/// An event's `data`, parsed for CEL once.
pub enum ParsedData {
    Json(serde_json::Value),
    Text(String),
    Bytes(Vec<u8>),
}

/// Parses `data` the way CEL sees it: JSON (by content type, or when there is none) as
/// values, `text/*` as a string, anything else as bytes. `None` when there is no data.
pub fn parse_data(event: &Event) -> Option<ParsedData> {
    let content_type = event.datacontenttype();
    let json_typed = content_type.is_none_or(is_json_media_type);
    Some(match event.data()? {
        Data::Json(raw) => match serde_json::from_slice(raw) {
            Ok(v) => ParsedData::Json(v),
            Err(_) => ParsedData::Bytes(raw.to_vec()),
        },
        Data::Binary(b) if json_typed => match serde_json::from_slice(b) {
            Ok(v) => ParsedData::Json(v),
            Err(_) => ParsedData::Bytes(b.to_vec()),
        },
        Data::Binary(b)
            if content_type.is_some_and(|c| c.to_ascii_lowercase().starts_with("text/")) =>
        {
            match std::str::from_utf8(b) {
                Ok(s) => ParsedData::Text(s.to_string()),
                Err(_) => ParsedData::Bytes(b.to_vec()),
            }
        }
        Data::Text(s) => ParsedData::Text(s.clone()),
        Data::Binary(b) | Data::Proto { value: b, .. } => ParsedData::Bytes(b.to_vec()),
    })
}

/// Builds the activation for one event: an inner scope of `base` with the variables in
/// `needs`. `data` must be [`parse_data`] of the same event when `needs.data`.
pub fn activation<'p, 'v>(
    base: &'p Context<'p, 'v>,
    event: &'v Event,
    data: Option<&'v ParsedData>,
    needs: &Needs,
) -> Context<'p, 'v> {
    let mut ctx = base.new_inner_scope();
    for name in &needs.attributes {
        if let Some(v) = event.get(name) {
            ctx.add_variable_as_val(name.as_str(), attr_val(v));
        }
    }
    if needs.attribute_map {
        let map: HashMap<CelMapKey<'v>, Box<dyn Val + 'v>> = event
            .attributes()
            .iter()
            .map(|(n, v)| (CelMapKey::from(n.as_str()), attr_val(v)))
            .collect();
        ctx.add_variable_as_val("attributes", Box::new(CelMap::from(map)));
    }
    if needs.data {
        if let Some(d) = data {
            ctx.add_variable_as_val("data", data_val(d));
        }
    }
    ctx
}

/// An attribute as CEL sees it: strings (borrowed), ints, bools, bytes; `time`-typed
/// values as timestamps.
pub fn attr_val(v: &AttrValue) -> Box<dyn Val + '_> {
    match v {
        AttrValue::Boolean(b) => Box::new(CelBool::from(*b)),
        AttrValue::Integer(i) => Box::new(CelInt::from(i64::from(*i))),
        AttrValue::Binary(b) => Box::new(CelBytes::from(&b[..])),
        AttrValue::String(s) | AttrValue::Uri(s) | AttrValue::UriRef(s) => {
            Box::new(CelString::from(s.as_str()))
        }
        AttrValue::Timestamp(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => Box::new(CelTimestamp::from(t)),
            Err(_) => Box::new(CelString::from(s.as_str())),
        },
    }
}

fn data_val(d: &ParsedData) -> Box<dyn Val + '_> {
    match d {
        ParsedData::Json(v) => json_val(v),
        ParsedData::Text(s) => Box::new(CelString::from(s.as_str())),
        ParsedData::Bytes(b) => Box::new(CelBytes::from(b.as_slice())),
    }
}

/// A JSON value as CEL values, strings borrowed from it.
pub fn json_val(v: &serde_json::Value) -> Box<dyn Val + '_> {
    match v {
        serde_json::Value::Null => Box::new(CelNull),
        serde_json::Value::Bool(b) => Box::new(CelBool::from(*b)),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Box::new(CelInt::from(i)),
            (None, Some(u)) => Box::new(CelUInt::from(u)),
            _ => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
        },
        serde_json::Value::String(s) => Box::new(CelString::from(s.as_str())),
        serde_json::Value::Array(a) => {
            Box::new(CelList::from(a.iter().map(json_val).collect::<Vec<_>>()))
        }
        serde_json::Value::Object(o) => {
            let map: HashMap<CelMapKey<'_>, Box<dyn Val + '_>> = o
                .iter()
                .map(|(k, v)| (CelMapKey::from(k.as_str()), json_val(v)))
                .collect();
            Box::new(CelMap::from(map))
        }
    }
}
