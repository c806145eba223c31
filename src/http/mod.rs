//! The HTTP pieces both listeners and the delivery client share: problem+json errors,
//! TLS configs from PEM files, bearer tokens, which addresses a sink may name, the
//! redaction of credentials in sink URIs, and W3C trace context. Nothing here knows the
//! broker's parts.

pub mod address;
pub mod auth;
pub mod problem;
pub mod redact;
pub mod tls;
pub mod trace;
