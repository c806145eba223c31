//! Delivery: lanes' deliverers, the HTTP client, the retry policy (pure functions),
//! dead letters and replies.

pub mod policy;
