//! Switchyard: a standalone CloudEvents broker. One URL in, a durable log, many sinks out.
//!
//! The crate is one library with a thin binary (`main.rs`). Modules are named after what
//! they own; `DESIGN.md`'s "Parts" table is the map.

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
