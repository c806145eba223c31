//! Inputs the fuzz targets (`fuzz/`) found crashing, kept in `fuzz/regressions/<target>/`
//! and replayed here through the targets' own code, so that a fixed crash stays fixed.

#[path = "../fuzz/src/lib.rs"]
mod targets;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("binary_headers", targets::binary_headers),
    ("structured_json", targets::structured_json),
    ("batch_json", targets::batch_json),
    ("protobuf", targets::protobuf),
    ("subscription_yaml", targets::subscription_yaml),
    ("cel_filter", targets::cel_filter),
    ("cesql", targets::cesql),
];

#[test]
fn every_kept_crash_input_now_runs_clean() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(name)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let input = std::fs::read(&path).unwrap();
            target(&input);
            replayed += 1;
        }
    }
    eprintln!("{replayed} kept inputs replayed");
}

#[test]
fn every_target_runs_on_an_empty_and_a_plain_input() {
    for (_, target) in TARGETS {
        target(b"");
        target(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#);
    }
}
