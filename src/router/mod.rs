//! Routing: filters (attribute, Subscriptions API dialects, CEL), the shared per-event
//! activation, and (as it lands) the router that records matches in lanes.

pub mod activation;
pub mod filter;
