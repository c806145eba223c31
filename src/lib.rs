//! Switchyard: a standalone CloudEvents broker. One URL in, a durable log, many sinks out.
//!
//! The crate is one library with a thin binary (`main.rs`). Modules are named after what
//! they own; README's code map says where each part lives.
//!
//! The modules form layers, and a module imports only from the layers before its own
//! ([`LAYERS`], held by a test): the event model and the clock first; then the pieces
//! with no broker knowledge (expressions, the runtime, the metric registry, HTTP
//! helpers, span export); then the log, the config, and the parts that run on them (router, delivery,
//! ingress, admin); `server` wires them together and `cli` talks to a running broker.

pub mod admin;
pub mod cli;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod event;
pub mod expr;
pub mod http;
pub mod ingress;
pub mod log;
pub mod metrics;
pub mod router;
pub mod runtime;
pub mod server;
pub mod spans;
pub mod store;

/// The crate's top-level modules, lowest first. Each imports only from the ones before
/// it (tests aside).
pub const LAYERS: &[&str] = &[
    "event", "clock", "expr", "runtime", "metrics", "http", "spans", "store", "log", "config",
    "router", "delivery", "ingress", "admin", "server", "cli",
];

#[cfg(test)]
mod tests {
    use super::LAYERS;
    use std::path::Path;

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// `crate::name` paths in the code before its `#[cfg(test)]` module.
    fn imports(text: &str) -> Vec<String> {
        let code = text.split("#[cfg(test)]").next().unwrap_or(text);
        let mut found = Vec::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            found.push(name);
        }
        found
    }

    #[test]
    fn no_module_imports_one_above_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut wrong = Vec::new();
        for file in &files {
            let rel = file.strip_prefix(&src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let top = top.trim_end_matches(".rs");
            let Some(level) = LAYERS.iter().position(|l| *l == top) else {
                assert!(
                    ["lib", "main"].contains(&top),
                    "{} is in no layer of LAYERS",
                    rel.display()
                );
                continue;
            };
            for name in imports(&std::fs::read_to_string(file).unwrap()) {
                let other = LAYERS.iter().position(|l| *l == name);
                assert!(
                    other.is_some(),
                    "{} imports crate::{name}, in no layer",
                    rel.display()
                );
                if other.unwrap() > level {
                    wrong.push(format!("{} imports crate::{name}", rel.display()));
                }
            }
        }
        assert!(wrong.is_empty(), "imports from a higher layer: {wrong:#?}");
    }

    #[test]
    fn the_layer_check_sees_imports() {
        let text =
            "use crate::log::Log;\nfn f() { crate::event::x(); }\n#[cfg(test)]\nuse crate::server;";
        assert_eq!(imports(text), ["log", "event"]);
    }
}
