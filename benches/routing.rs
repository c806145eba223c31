//! Routing micro-benchmarks: the cost of one (event, subscription) decision with 100
//! subscriptions sharing one activation, for attribute filters, CESQL (`sql`) filters,
//! CEL on attributes and CEL on `data`. The event is the 19 KiB Tekton
//! `pipelinerun.successful` request.
//! Criterion reports elements per second; one element is one (event, subscription).
//!
//! The `transform` group, on the 24 KiB Tekton `pipelinerun.failed` request: the Slack
//! example (config/examples/slack.yaml: blocks, the failed tasks found by a
//! comprehension) once with an activation shared with routing (`shared-activation`) and
//! once as a lane makes it alone (`per-delivery`: the body parsed and the activation
//! built too); and a Slack message of one line (the run's namespace, name and link).
//!
//! `cargo bench --bench routing`; see docs/performance.md.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchyard::config::subscriptions::from_sources;
use switchyard::event::{from_file, Event};
use switchyard::expr::activation;
use switchyard::expr::cost::Input;
use switchyard::router::{decide_all, RouteSet, StatsMap};

const N: usize = 100;

fn event() -> Event {
    fixture("09-pipelinerun-successful.json")
}

fn fixture(name: &str) -> Event {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tekton")
        .join(name);
    from_file(&std::fs::read(path).expect("tests/fixtures")).unwrap()
}

fn set(filter: impl Fn(usize) -> String) -> RouteSet {
    let text: String = (0..N)
        .map(|i| {
            format!(
                "apiVersion: switchyard.dev/v1alpha1\nkind: Subscription\nmetadata: {{ name: s{i} }}\nspec:\n  filter:\n{}  sinks: [{{ uri: 'http://sink/' }}]\n---\n",
                filter(i)
            )
        })
        .collect();
    let defaults = switchyard::config::from_yaml(None, "", &Default::default())
        .unwrap()
        .delivery;
    let subs = from_sources(
        &[(PathBuf::from("bench.yaml"), text)],
        &["default".into()],
        &defaults,
    )
    .unwrap();
    RouteSet::new(subs, &StatsMap::default())
}

fn routing(c: &mut Criterion) {
    let e = event();
    let kinds: [(&str, RouteSet); 4] = [
        (
            "attributes",
            set(|i| {
                format!("    attributes:\n      type: dev.tekton.event.pipelinerun.successful.v1\n      subject: run-{i}\n")
            }),
        ),
        (
            "sql",
            set(|i| {
                format!("    filters:\n      - sql: \"type LIKE 'dev.tekton.event.pipelinerun.%' AND subject = 'run-{i}'\"\n")
            }),
        ),
        (
            "cel-attributes",
            set(|i| {
                format!("    cel: \"type == 'dev.tekton.event.pipelinerun.successful.v1' && subject.startsWith('run-{i}')\"\n")
            }),
        ),
        (
            "cel-data",
            set(|i| format!("    cel: \"data.pipelineRun.metadata.namespace == 'ns-{i}'\"\n")),
        ),
    ];
    let base = switchyard::expr::activation::base();
    let mut g = c.benchmark_group("route-100-subscriptions");
    g.throughput(Throughput::Elements(N as u64));
    for (name, set) in &kinds {
        let (routes, needs) = set.broker("default");
        let routes: Vec<Arc<_>> = routes.to_vec();
        g.bench_function(*name, |b| {
            b.iter(|| {
                decide_all(&base, &routes, &needs, &e, |_, d| {
                    black_box(d);
                })
            })
        });
    }
    g.finish();
}

fn transforms(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let file = root.join("config/examples/slack.yaml");
    let text = std::fs::read_to_string(&file).expect("config/examples/slack.yaml");
    let defaults = switchyard::config::from_yaml(None, "", &Default::default())
        .unwrap()
        .delivery;
    let subs = from_sources(&[(file, text)], &["default".into()], &defaults).unwrap();
    let transform = subs[0].sinks[0]
        .transform
        .clone()
        .expect("the example transforms");
    let e = fixture("10-pipelinerun-failed.json");
    let data = activation::parse_data(&e);
    let base = activation::base();
    let ctx = activation::activation(&base, &e, data.as_ref(), transform.needs());
    let input = Input::new(&e, data.as_ref());
    // The message alone: a line of text with the run's namespace, name and link.
    let line = r#"    - uri: http://sink/
      format: plain
      transform:
        values: { dashboard: "https://tekton.example.com" }
        data: >-
          {"text": ":x: PipelineRun <" + values.dashboard + "/#/namespaces/" +
          data.pipelineRun.metadata.namespace + "/pipelineruns/" + data.pipelineRun.metadata.name +
          "|" + data.pipelineRun.metadata.namespace + "/" + data.pipelineRun.metadata.name + "> failed"}
"#;
    let text = format!(
        "apiVersion: switchyard.dev/v1alpha1\nkind: Subscription\nmetadata: {{ name: line }}\nspec:\n  sinks:\n{line}"
    );
    let subs = from_sources(
        &[(PathBuf::from("line.yaml"), text)],
        &["default".into()],
        &defaults,
    )
    .unwrap();
    let message = subs[0].sinks[0].transform.clone().unwrap();
    let mut g = c.benchmark_group("transform");
    g.throughput(Throughput::Elements(1));
    g.bench_function("slack-example/shared-activation", |b| {
        b.iter(|| black_box(transform.apply_with(&e, &ctx, &input).unwrap()))
    });
    g.bench_function("slack-example/per-delivery", |b| {
        b.iter(|| black_box(transform.apply(&e).unwrap()))
    });
    g.bench_function("slack-message/shared-activation", |b| {
        b.iter(|| black_box(message.apply_with(&e, &ctx, &input).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, routing, transforms);
criterion_main!(benches);
