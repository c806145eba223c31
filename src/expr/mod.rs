//! Expressions over events, compiled when the config loads and evaluated per event:
//! the shared CEL activation, the subscription filter dialects, the bound on what a
//! CEL program may cost, and the dedupe key. The router evaluates filters, the ingress
//! dedupe keys, and `explain` both; none of them is needed to read this module.
//!
//! It is `expr` rather than `cel` because not every dialect is CEL: attribute and
//! Subscriptions API filters live here too, beside CEL.

pub mod activation;
pub mod cesql;
pub mod cost;
pub mod dedupe_key;
pub mod filter;
pub mod transform;
