//! Routing micro-benchmarks: the cost of one (event, subscription) decision with 100
//! subscriptions sharing one activation, for attribute filters, CESQL (`sql`) filters,
//! CEL on attributes and CEL on `data`. The event is the 19 KiB Tekton
//! `pipelinerun.successful` request.
//! Criterion reports elements per second; one element is one (event, subscription).
//!
//! `cargo bench --bench routing`; see docs/performance.md.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchyard::config::subscriptions::from_sources;
use switchyard::event::{from_file, Event};
use switchyard::router::{decide_all, RouteSet, StatsMap};

const N: usize = 100;

fn event() -> Event {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tekton/09-pipelinerun-successful.json"
    );
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

criterion_group!(benches, routing);
criterion_main!(benches);
