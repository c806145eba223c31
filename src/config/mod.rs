//! The server config (`config/switchyard.yaml`): parse the YAML, apply `SWITCHYARD_*`
//! environment overrides, then validate into runtime types in one pass that reports
//! every error with its file, line and key. Nothing binds a port before this succeeds.

pub mod subscriptions;
mod transform;
pub mod units;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::expr::dedupe_key::DedupeKey;
use crate::log::jetstream::{Credentials, JetStreamOptions, Tls};
use crate::store::Durability;
use yaml::{Node, Value};

/// Where the server config is read from when neither `-c` nor `SWITCHYARD_CONFIG` names
/// a file. When it does not exist, the embedded defaults apply.
pub const DEFAULT_PATH: &str = "config/switchyard.yaml";

/// The environment variable that names the config file.
pub const CONFIG_ENV: &str = "SWITCHYARD_CONFIG";

/// One config error, with the place it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, or `env SWITCHYARD_…` for an environment override.
    pub origin: String,
    /// 1-based line; 0 when there is none (environment, whole file).
    pub line: usize,
    /// The dotted key, e.g. `storage.durability`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.key.is_empty()) {
            (0, true) => write!(f, "{}: {}", self.origin, self.message),
            (0, false) => write!(f, "{}: {}: {}", self.origin, self.key, self.message),
            (l, true) => write!(f, "{}:{l}: {}", self.origin, self.message),
            (l, false) => write!(f, "{}:{l}: {}: {}", self.origin, self.key, self.message),
        }
    }
}

/// Every error found in a config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// The validated server config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from; `None` for the embedded defaults.
    pub file: Option<PathBuf>,
    pub ingress: IngressConfig,
    pub admin: AdminConfig,
    pub storage: StorageConfig,
    pub brokers: Vec<String>,
    pub dedupe: DedupeConfig,
    pub subscriptions: Vec<PathBuf>,
    /// Whether `subscriptions` was set (file or environment) rather than defaulted: a
    /// set path must exist; the default folder may be absent.
    pub subscriptions_set: bool,
    pub delivery: DeliveryConfig,
    pub replies: RepliesConfig,
    pub tracing: TracingConfig,
    /// How long in-flight requests and deliveries may take to finish at shutdown.
    pub shutdown_grace_period: Duration,
    /// The keys the environment set, over the file, with the variable that set each
    /// (`serve` says so at start: an edit of such a key in the file does nothing).
    pub from_env: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct IngressConfig {
    pub listen: SocketAddr,
    /// The largest single event (a binary or structured body, or one batch member).
    pub max_event_bytes: u64,
    /// The largest batch request body.
    pub max_batch_bytes: u64,
    /// The most context attributes one event may have (each is a header in binary mode).
    pub max_attributes: usize,
    /// The most bytes one event's attributes may take, names and values as binary mode
    /// sends them.
    pub max_attribute_bytes: u64,
    /// Accepted bearer tokens; empty means no token is required.
    pub tokens: Vec<IngressToken>,
    /// How long a client may take to send its request headers.
    pub header_read_timeout: Duration,
    /// How long a client may take to send its whole body.
    pub body_read_timeout: Duration,
    /// After `min_body_rate_after`, a body must have arrived at this many bytes per
    /// second on average, or it is cut off; 0 turns the check off.
    pub min_body_rate: u64,
    pub min_body_rate_after: Duration,
    /// The most request body bytes one connection may have buffered at once (all its
    /// HTTP/2 streams together).
    pub max_connection_body_bytes: u64,
    /// The most request body bytes all connections together may have buffered at once.
    pub max_buffered_body_bytes: u64,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// TLS, when a certificate is configured; plain HTTP otherwise.
    pub tls: Option<IngressTls>,
}

/// The ingress's TLS files, and the server config built from them at load.
#[derive(Clone)]
pub struct IngressTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, clients must present a certificate issued by this CA (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
    pub config: Arc<rustls::ServerConfig>,
}

impl fmt::Debug for IngressTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngressTls")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("client_ca_file", &self.client_ca_file)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// When set, every `/api/v1` call needs it as a bearer token.
    pub token: Option<String>,
    /// `/metrics` answers without the token.
    pub metrics_public: bool,
    /// `/livez` and `/readyz` answer without the token.
    pub health_public: bool,
}

/// Where the events, the lanes and the dead letters are kept (`storage.backend`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// The log on this node's disk, in `storage.path`.
    #[default]
    Embedded,
    /// NATS JetStream streams, shared by every instance naming the same servers and prefix.
    JetStream,
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub backend: Backend,
    /// The JetStream settings; `Some` exactly when `backend` is [`Backend::JetStream`].
    pub jetstream: Option<JetStreamOptions>,
    /// The data directory.
    pub path: PathBuf,
    pub durability: Durability,
    pub cache_capacity: u64,
    pub retention_max_age: Duration,
    pub retention_max_bytes: u64,
    /// At `retention_max_bytes`, refuse appends instead of deleting the oldest events.
    pub refuse_at_max_bytes: bool,
    /// Appends are refused while the log's filesystem has less free space than this.
    pub min_free_bytes: u64,
    /// The dead-letter store keeps at most this many letters (the oldest go first).
    pub dead_letters_max_count: u64,
    /// Dead letters older than this are deleted; zero keeps them.
    pub dead_letters_max_age: Duration,
}

#[derive(Clone, Debug)]
pub struct DedupeConfig {
    /// Zero turns dedupe off.
    pub window: Duration,
    pub key: Arc<DedupeKey>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackoffPolicy {
    Exponential,
    Linear,
}

/// How deliveries are attempted and retried: the server's defaults (`delivery`) and a
/// subscription's own (`spec.delivery`) alike, read by one parser ([`RETRY_KEYS`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Retries after the first attempt.
    pub count: u32,
    pub backoff_policy: BackoffPolicy,
    pub backoff_delay: Duration,
    pub backoff_max: Duration,
    /// The longest `Retry-After` honoured.
    pub retry_after_max: Duration,
    /// How long one attempt may take.
    pub timeout: Duration,
}

/// The keys of [`Retry`], under `delivery` and `spec.delivery`.
pub const RETRY_KEYS: &[&str] = &[
    "retry",
    "backoffPolicy",
    "backoffDelay",
    "backoffMax",
    "retryAfterMax",
    "timeout",
];

/// An accepted ingress token, and what it may send (`None`: anything, to any broker).
#[derive(Clone, PartialEq, Eq)]
pub struct IngressToken {
    pub value: String,
    pub scope: Option<TokenScope>,
}

impl fmt::Debug for IngressToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngressToken")
            .field("value", &"(secret)")
            .field("scope", &self.scope)
            .finish()
    }
}

impl From<&str> for IngressToken {
    fn from(value: &str) -> Self {
        IngressToken {
            value: value.to_string(),
            scope: None,
        }
    }
}

/// What a scoped token may send: each list empty means any; a value ending in `*` is a
/// prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenScope {
    pub brokers: Vec<String>,
    pub types: Vec<String>,
    pub sources: Vec<String>,
}

impl TokenScope {
    /// Whether `value` is one of `patterns` (all of them when there are none).
    pub fn allows(patterns: &[String], value: &str) -> bool {
        patterns.is_empty()
            || patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => value.starts_with(prefix),
                None => p == value,
            })
    }
}

/// A lane's token bucket (`delivery.rateLimit`): attempts a second, and how many may
/// go at once after a quiet spell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

/// A lane's circuit breaker (`delivery.circuitBreaker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreaker {
    /// Failed attempts in a row that open it.
    pub failures: u32,
    /// How long it stays open before a probe (doubled per failed probe, up to the
    /// retry policy's `backoffMax`).
    pub cooldown: Duration,
}

/// Flow control of each lane; `None` parts are off.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Flow {
    pub rate_limit: Option<RateLimit>,
    pub circuit_breaker: Option<CircuitBreaker>,
}

/// Default delivery settings for subscriptions that do not set their own.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub retry: Retry,
    /// Rate limit and circuit breaker, for subscriptions that do not set their own.
    pub flow: Flow,
    /// Cloud metadata addresses that sinks may reach anyway.
    pub allow_addresses: Vec<std::net::IpAddr>,
}

#[derive(Debug, Clone)]
pub struct RepliesConfig {
    pub max_hops: u32,
}

#[derive(Debug, Clone, Default)]
pub struct TracingConfig {
    /// Where spans are exported (OTLP over HTTP: `<endpoint>/v1/traces`); `None`
    /// exports none.
    pub otlp_endpoint: Option<http::Uri>,
}

/// One settable key of the server config: its dotted path, its default (YAML), whether
/// it takes a list, and what it means (README's key table is rendered from these).
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub path: &'static str,
    pub default: &'static str,
    pub list: bool,
    pub doc: &'static str,
}

const fn key(path: &'static str, default: &'static str, doc: &'static str) -> Key {
    Key {
        path,
        default,
        list: false,
        doc,
    }
}

const fn list(path: &'static str, default: &'static str, doc: &'static str) -> Key {
    Key {
        path,
        default,
        list: true,
        doc,
    }
}

/// Every key of the server config, in the order `config/switchyard.yaml` and README list
/// them. The embedded defaults, the check of unknown keys, the environment overrides
/// and README's table all come from here; a test holds the validator to it.
pub const SCHEMA: &[Key] = &[
    key("ingress.listen", "0.0.0.0:8080", "producer-facing address"),
    key("ingress.maxEventBytes", "4MiB", "largest single-event body, and largest data of an event in a batch (413 above it; a body refused before it is read when `Content-Length` says so; on JetStream at most what the servers' `max_payload` holds)"),
    key("ingress.maxBatchBytes", "32MiB", "largest batch body"),
    key("ingress.maxAttributes", "64", "most context attributes one event may have (400 above it)"),
    key("ingress.maxAttributeBytes", "32KiB", "most bytes one event's attributes may take, names and values as binary mode sends them (413 above it)"),
    list("ingress.tokens", "[]", "accepted bearer tokens (strings or `{valueFrom: {env: NAME}}` / `{valueFrom: {file: PATH}}`), each may be scoped: `{value or valueFrom, brokers, types, sources}` (see [docs/security.md](docs/security.md#scoped-ingress-tokens)); empty = open"),
    key("ingress.headerReadTimeout", "10s", "a client that has not sent its headers by then is cut off (also a silent new connection, and a kept-alive one idle between requests)"),
    key("ingress.bodyReadTimeout", "60s", "a body not received by then is answered 408"),
    key("ingress.minBodyRate", "1KiB", "after `minBodyRateAfter`, a body must average this many bytes/s or it is answered 408 (`0`: off)"),
    key("ingress.minBodyRateAfter", "5s", "when the `minBodyRate` check starts"),
    key("ingress.maxConnectionBodyBytes", "64MiB", "request body bytes one connection (all its HTTP/2 streams) may have buffered at once (503 past it)"),
    key("ingress.maxBufferedBodyBytes", "512MiB", "request body bytes all connections together may have buffered at once (503 past it)"),
    key("ingress.maxConnections", "4096", "connections served at once; at the limit the connection idle the longest is closed to make room"),
    key("ingress.tls.certFile", "null", "serve HTTPS with this PEM chain (with `keyFile`: both or neither)"),
    key("ingress.tls.keyFile", "null", "the PEM key of `certFile`"),
    key("ingress.tls.clientCaFile", "null", "mutual TLS: clients must present a certificate from this CA"),
    key("admin.listen", "127.0.0.1:9090", "`/metrics`, `/livez`, `/readyz`, the admin API under `/api/v1`, the web console under `/ui/`"),
    key("admin.token", "null", "bearer token for every `/api/v1` call (a string or a `valueFrom` reference)"),
    list("admin.public", "[metrics, health]", "what answers without the token: `/metrics`, and `/livez` + `/readyz`"),
    key("storage.backend", "embedded", "`embedded`: the log on this node's disk, in `storage.path`; `jetstream`: events, lanes and dead letters on the NATS JetStream servers of `storage.jetstream`, shared by every instance that names them"),
    list("storage.jetstream.servers", "[]", "the NATS servers, `nats://HOST:PORT` or `tls://HOST:PORT` (port 4222 when left out); required with `backend: jetstream`"),
    key("storage.jetstream.replicas", "1", "copies of each broker's stream, 1-5 (at most the cluster's size)"),
    key("storage.jetstream.streamPrefix", "SWITCHYARD", "the streams, subjects and bucket are named from it (`<prefix>-<broker>`, `<prefix>.<broker>.events`, …): letters, digits, `-` and `_`"),
    key("storage.jetstream.token", "null", "authenticate with this token (a string or a `valueFrom` reference); at most one of `token`, `user` + `password`, `credsFile`"),
    key("storage.jetstream.user", "null", "authenticate as this user, with `password` (each a string or a `valueFrom` reference)"),
    key("storage.jetstream.password", "null", "the password of `user`"),
    key("storage.jetstream.credsFile", "null", "authenticate with this `.creds` file (a user JWT and its NKey seed)"),
    key("storage.jetstream.tls.caFile", "null", "trust this PEM CA instead of the system's roots (TLS is on when any `tls` key is set or a server is `tls://`)"),
    key("storage.jetstream.tls.certFile", "null", "client certificate (PEM) for servers that verify clients (with `keyFile`: both or neither)"),
    key("storage.jetstream.tls.keyFile", "null", "the PEM key of `certFile`"),
    key("storage.path", "./data", "data directory"),
    key("storage.durability", "fsync", "`fsync`: 202 after the sync; `relaxed`: synced every 100 ms in the background (a crash can lose that much); embedded only (JetStream acknowledges once its replicas hold the event)"),
    key("storage.cacheCapacity", "8MiB", "sled's page cache for the dead letters, counted in sled's serialized sizes: the heap it takes is several times this ([storage.md](docs/storage.md#memory))"),
    key("storage.retention.maxAge", "7d", "events older than this are deleted in the background (`0`: kept); see [docs/storage.md](docs/storage.md#retention)"),
    key("storage.retention.maxBytes", "10GiB", "while all brokers' records take more than this, the oldest are deleted (`0`: no bound; on jetstream, each broker's stream)"),
    key("storage.retention.onMaxBytes", "deleteOldest", "`refuseWrites` makes `maxBytes` a hard quota: `503` with `Retry-After` at the quota, nothing deleted for size (embedded only)"),
    key("storage.minFreeBytes", "64MiB", "`503` with `Retry-After` while the log's filesystem has less free space, so the disk never fills (`0`: off)"),
    key("storage.deadLetters.maxCount", "100000", "the dead-letter store keeps at most this many letters: the oldest go first"),
    key("storage.deadLetters.maxAge", "30d", "dead letters older than this are deleted (`0`: kept)"),
    list("brokers", "[default]", "broker names"),
    key("dedupe.window", "10m", "`0` turns dedupe off"),
    key("dedupe.key", r#"'source + "\n" + id'"#, "CEL over the attributes (and `data`)"),
    list("subscriptions", "[./config/subscriptions]", "subscription files and folders of `*.yaml` (a set path must exist; the default folder may be absent)"),
    key("delivery.retry", "10", "retries after the first attempt, for subscriptions that do not set their own (as the `delivery` keys below)"),
    key("delivery.backoffPolicy", "exponential", "`exponential` or `linear`"),
    key("delivery.backoffDelay", "PT0.2S", "the first retry's delay"),
    key("delivery.backoffMax", "PT5M", "the longest delay between retries"),
    key("delivery.retryAfterMax", "PT10M", "the longest `Retry-After` of a 429 or 503 that is honoured"),
    key("delivery.timeout", "PT30S", "how long one attempt may take"),
    key("delivery.rateLimit.perSecond", "0", "attempts a second each lane may make, a token bucket (`0`: no limit); events wait in the lane, never dropped, and `Retry-After` still wins when it asks for longer"),
    key("delivery.rateLimit.burst", "1", "attempts a lane may make at once after a quiet spell"),
    key("delivery.circuitBreaker.failures", "0", "failed attempts in a row after which a lane stops sending for `cooldown`, then sends one probe (`0`: off; see [docs/delivery.md](docs/delivery.md#circuit-breaker))"),
    key("delivery.circuitBreaker.cooldown", "PT30S", "how long an open breaker waits before its probe; doubled after each failed probe, up to `backoffMax`"),
    list("delivery.allowAddresses", "[]", "cloud metadata addresses sinks may reach anyway (they are refused otherwise; see [docs/security.md](docs/security.md))"),
    key("replies.maxHops", "8", "a reply deeper than this is dropped and counted"),
    key("tracing.otlp.endpoint", "null", "export spans of ingest, routing and each delivery attempt to this OpenTelemetry collector, OTLP over HTTP: its base URL, e.g. `http://otel-collector:4318` (spans go to `<endpoint>/v1/traces`; `null`: no export); see [docs/operations.md](docs/operations.md#spans)"),
    key("shutdown.gracePeriod", "20s", "on SIGTERM/SIGINT, how long requests and delivery attempts under way may take to finish"),
];

/// The embedded defaults as a YAML document, built from [`SCHEMA`].
pub fn defaults_yaml() -> String {
    let mut out = String::new();
    let mut open: Vec<&str> = Vec::new();
    for k in SCHEMA {
        let parts: Vec<&str> = k.path.split('.').collect();
        let (sections, leaf) = parts.split_at(parts.len() - 1);
        let shared = open
            .iter()
            .zip(sections)
            .take_while(|(a, b)| a == b)
            .count();
        open.truncate(shared);
        for s in &sections[shared..] {
            out.push_str(&format!("{}{s}:\n", "  ".repeat(open.len())));
            open.push(s);
        }
        out.push_str(&format!(
            "{}{}: {}\n",
            "  ".repeat(open.len()),
            leaf[0],
            k.default
        ));
    }
    out
}

/// README's table of the config keys, rendered from [`SCHEMA`].
pub fn key_table() -> String {
    let mut out = String::from("| key | default | meaning |\n|---|---|---|\n");
    for k in SCHEMA {
        let default = k.default.trim_matches('\'');
        out.push_str(&format!("| `{}` | `{default}` | {} |\n", k.path, k.doc));
    }
    out
}

/// Orders nodes as they are written: the file's by line, then the environment's.
fn written_order(node: &Node) -> (bool, usize) {
    (node.line == 0, node.line)
}

/// The section of the JetStream backend's keys.
const JETSTREAM: &str = "storage.jetstream.";

/// Checks a NATS server URL, `nats://HOST[:PORT]` or `tls://HOST[:PORT]`; `Ok(true)`
/// when it asks for TLS.
fn nats_url(url: &str) -> Result<bool, String> {
    let bad = |why: &str| {
        format!("'{url}' is not a NATS server URL: {why}; the form is nats://HOST:PORT or tls://HOST:PORT")
    };
    let (tls, rest) = if let Some(rest) = url.strip_prefix("nats://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("tls://") {
        (true, rest)
    } else {
        return Err(bad("the scheme must be nats:// or tls://"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('@') {
        // The URLs are logged; credentials have keys of their own.
        return Err(bad(
            "credentials do not go in the URL (use storage.jetstream.user and password, or token)",
        ));
    }
    if authority.contains(['/', '?', '#']) {
        return Err(bad("a server URL has no path"));
    }
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| bad("the IPv6 address has no closing ]"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad(&format!("'{host}' is not an IPv6 address")));
        }
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad("a port follows the host after ':'"))?,
                ),
            ),
        }
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if !host_ok {
            return Err(bad(&format!("'{host}' is not a host name or address")));
        }
        (host, port)
    };
    if let Some(port) = port {
        if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
            return Err(bad(&format!(
                "'{port}' after {host} is not a port (1-65535)"
            )));
        }
    }
    Ok(tls)
}

fn is_key(path: &str) -> bool {
    SCHEMA.iter().any(|k| k.path == path)
}

fn is_list_key(path: &str) -> bool {
    SCHEMA.iter().any(|k| k.path == path && k.list)
}

/// Which file to read: `-c`, else `SWITCHYARD_CONFIG`, else [`DEFAULT_PATH`] if it
/// exists. `None` means the embedded defaults. A named file must exist.
pub fn resolve_path(
    flag: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Option<(PathBuf, bool)> {
    if let Some(p) = flag {
        return Some((p.to_path_buf(), true));
    }
    if let Some(p) = env.get(CONFIG_ENV).filter(|p| !p.is_empty()) {
        return Some((PathBuf::from(p), true));
    }
    let default = PathBuf::from(DEFAULT_PATH);
    default.exists().then_some((default, false))
}

/// Loads the config: the file named by `flag` / `SWITCHYARD_CONFIG` / the default path,
/// over the embedded defaults, with `SWITCHYARD_*` overrides from `env`.
pub fn load(flag: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Config, ConfigErrors> {
    match load_partial(flag, env) {
        (Some(config), errors) if errors.is_empty() => Ok(config),
        (_, errors) => Err(ConfigErrors(errors)),
    }
}

/// As [`load`], and beside the errors the config as far as it validates (see
/// [`from_yaml_partial`]), so that what depends on it (the subscription files it names)
/// can be checked in the same run.
pub fn load_partial(
    flag: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> (Option<Config>, Vec<ConfigError>) {
    match resolve_path(flag, env) {
        None => from_yaml_partial(None, "", env),
        Some((path, _)) => match std::fs::read_to_string(&path) {
            Ok(text) => from_yaml_partial(Some(&path), &text, env),
            Err(e) => (
                None,
                vec![ConfigError {
                    origin: path.display().to_string(),
                    line: 0,
                    key: String::new(),
                    message: format!("cannot read the config file: {e}"),
                }],
            ),
        },
    }
}

/// Validates config text (empty text is the defaults) with overrides from `env`.
pub fn from_yaml(
    file: Option<&Path>,
    text: &str,
    env: &BTreeMap<String, String>,
) -> Result<Config, ConfigErrors> {
    match from_yaml_partial(file, text, env) {
        (Some(config), errors) if errors.is_empty() => Ok(config),
        (_, errors) => Err(ConfigErrors(errors)),
    }
}

/// As [`from_yaml`], returning every error beside the config as far as it validates: a
/// key at fault keeps its default. `None` when the text is not one YAML mapping.
pub fn from_yaml_partial(
    file: Option<&Path>,
    text: &str,
    env: &BTreeMap<String, String>,
) -> (Option<Config>, Vec<ConfigError>) {
    let origin = file.map_or_else(|| "<defaults>".to_string(), |p| p.display().to_string());
    let mut v = Validator {
        origin: origin.clone(),
        ..Validator::default()
    };
    let user = match yaml::parse(text) {
        Ok(mut docs) if docs.len() <= 1 => docs.pop().unwrap_or(Node::new(0, Value::Null)),
        Ok(_) => {
            v.error_at(0, "", "the server config must be a single YAML document");
            return (None, v.errors);
        }
        Err(e) => {
            v.error_at(e.line, "", format!("YAML syntax error: {}", e.message));
            return (None, v.errors);
        }
    };
    let mut root = match user.value {
        Value::Null => Node::new(0, Value::Map(Vec::new())),
        Value::Map(_) => user,
        _ => {
            v.error_at(
                user.line,
                "",
                format!("the config must be a mapping, not {}", user.kind()),
            );
            return (None, v.errors);
        }
    };
    v.check_unknown(&root, "");
    let from_env = apply_env(&mut root, env, &mut v);
    let defaults = yaml::parse(&defaults_yaml())
        .ok()
        .and_then(|mut d| d.pop())
        .unwrap_or(Node::new(0, Value::Null));
    let mut config = v.build(&root, &defaults, file);
    config.from_env = from_env;
    v.errors
        .sort_by(|a, b| (&a.origin, a.line).cmp(&(&b.origin, b.line)));
    (Some(config), v.errors)
}

/// Normalises a key path for matching environment names: lower case, no separators.
fn env_form(path: &str) -> String {
    path.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Sets the keys `SWITCHYARD_*` variables name; returns each key set with its variable.
fn apply_env(
    root: &mut Node,
    env: &BTreeMap<String, String>,
    v: &mut Validator,
) -> Vec<(String, String)> {
    let mut set = Vec::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("SWITCHYARD_") else {
            continue;
        };
        // Variables of the command line itself, not config keys.
        if [
            CONFIG_ENV,
            "SWITCHYARD_LOG",
            "SWITCHYARD_LOG_FORMAT",
            "SWITCHYARD_TOKEN",
        ]
        .contains(&name.as_str())
        {
            continue;
        }
        let wanted = env_form(rest);
        let Some(path) = SCHEMA
            .iter()
            .map(|k| k.path)
            .find(|k| env_form(k) == wanted)
        else {
            v.errors.push(ConfigError {
                origin: format!("env {name}"),
                line: 0,
                key: String::new(),
                message:
                    "does not name a config key (e.g. SWITCHYARD_STORAGE_PATH for storage.path)"
                        .into(),
            });
            continue;
        };
        let origin: Arc<str> = Arc::from(format!("env {name}"));
        let mut node = match yaml::parse(value) {
            Ok(mut d) if d.len() == 1 => d.pop().unwrap_or(Node::new(0, Value::Null)),
            _ => Node::new(0, Value::Str(value.clone())),
        };
        if value.is_empty() {
            node = Node::new(0, Value::Null);
        }
        // A list key takes a plain comma-separated value too: SWITCHYARD_BROKERS=default,ci.
        if is_list_key(path) {
            if let Value::Str(text) = &node.value {
                let items = text
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Node::new(0, Value::Str(s.to_string())))
                    .collect();
                node = Node::new(0, Value::Seq(items));
            }
        }
        mark_env(&mut node, &origin);
        set_path(root, path, node);
        set.push((path.to_string(), name.clone()));
    }
    set
}

fn mark_env(node: &mut Node, origin: &Arc<str>) {
    node.line = 0;
    node.env = Some(origin.clone());
    match &mut node.value {
        Value::Seq(items) => items.iter_mut().for_each(|n| mark_env(n, origin)),
        Value::Map(entries) => entries.iter_mut().for_each(|(_, l, n)| {
            *l = 0;
            mark_env(n, origin)
        }),
        _ => {}
    }
}

fn set_path(root: &mut Node, path: &str, value: Node) {
    let mut node = root;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if !matches!(node.value, Value::Map(_)) {
            node.value = Value::Map(Vec::new());
        }
        let Value::Map(entries) = &mut node.value else {
            return;
        };
        let pos = match entries.iter().position(|(k, _, _)| k == part) {
            Some(p) => p,
            None => {
                entries.push((part.to_string(), 0, Node::new(0, Value::Null)));
                entries.len() - 1
            }
        };
        if i + 1 == parts.len() {
            entries[pos].2 = value;
            return;
        }
        node = &mut entries[pos].2;
    }
}

fn lookup<'n>(node: &'n Node, path: &str) -> Option<&'n Node> {
    let mut node = node;
    for part in path.split('.') {
        let Value::Map(entries) = &node.value else {
            return None;
        };
        node = &entries.iter().find(|(k, _, _)| k == part)?.2;
    }
    Some(node)
}

#[derive(Default)]
struct Validator {
    origin: String,
    errors: Vec<ConfigError>,
    /// The keys `build` looked up, in order (a test holds them to [`SCHEMA`]).
    picked: std::cell::RefCell<Vec<String>>,
}

impl Validator {
    fn error_at(&mut self, line: usize, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            origin: self.origin.clone(),
            line,
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn error(&mut self, node: &Node, key: &str, message: impl Into<String>) {
        let origin = node
            .env
            .as_deref()
            .map_or_else(|| self.origin.clone(), str::to_string);
        self.errors.push(ConfigError {
            origin,
            line: node.line,
            key: key.to_string(),
            message: message.into(),
        });
    }

    /// Reports keys that are not in the schema, and sections that are not mappings.
    fn check_unknown(&mut self, node: &Node, prefix: &str) {
        let Value::Map(entries) = &node.value else {
            return;
        };
        for (key, line, child) in entries {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            let leaf = is_key(&path);
            let section = SCHEMA
                .iter()
                .any(|k| k.path.starts_with(&format!("{path}.")));
            if leaf {
                continue;
            }
            if section {
                match &child.value {
                    Value::Map(_) => self.check_unknown(child, &path),
                    Value::Null => {}
                    _ => self.error_at(
                        *line,
                        &path,
                        format!("must be a mapping, not {}", child.kind()),
                    ),
                }
                continue;
            }
            let known: Vec<&str> = SCHEMA
                .iter()
                .map(|k| k.path)
                .filter_map(|k| {
                    let rest = if prefix.is_empty() {
                        Some(k)
                    } else {
                        k.strip_prefix(&format!("{prefix}."))
                    };
                    rest.map(|r| r.split('.').next().unwrap_or(r))
                })
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            self.error_at(
                *line,
                &path,
                format!("unknown key; expected one of: {}", known.join(", ")),
            );
        }
    }

    /// The user's node for `path`, else the default's.
    fn pick<'n>(&self, user: &'n Node, defaults: &'n Node, path: &str) -> &'n Node {
        self.picked.borrow_mut().push(path.to_string());
        match lookup(user, path) {
            Some(n) if !(matches!(n.value, Value::Null) && path != "admin.token") => n,
            _ => lookup(defaults, path).unwrap_or(defaults),
        }
    }

    /// A rate limit from its `perSecond` and `burst` nodes (under `path`); a key left
    /// out keeps its value in `base`.
    pub(crate) fn rate_limit(
        &mut self,
        per_second: Option<&Node>,
        burst: Option<&Node>,
        path: &str,
        base: Option<RateLimit>,
    ) -> Option<RateLimit> {
        let rate = match per_second {
            None => base.map_or(0.0, |r| r.per_second),
            Some(n) => match n.value {
                Value::Int(i) if (0..=1_000_000).contains(&i) => i as f64,
                Value::Float(f) if (0.0..=1_000_000.0).contains(&f) => f,
                _ => {
                    self.error(
                        n,
                        &format!("{path}.perSecond"),
                        "must be a number of attempts a second, 0 to 1000000 (0: no limit)",
                    );
                    0.0
                }
            },
        };
        let burst = match burst {
            None => base.map_or(1, |r| r.burst),
            Some(n) => self.int(n, &format!("{path}.burst"), 1, 1_000_000) as u32,
        };
        (rate > 0.0).then_some(RateLimit {
            per_second: rate,
            burst,
        })
    }

    /// A circuit breaker from its `failures` and `cooldown` nodes (under `path`); a key
    /// left out keeps its value in `base` (the cooldown 30 s when there is none).
    pub(crate) fn circuit_breaker(
        &mut self,
        failures: Option<&Node>,
        cooldown: Option<&Node>,
        path: &str,
        base: Option<CircuitBreaker>,
    ) -> Option<CircuitBreaker> {
        let failures = match failures {
            None => base.map_or(0, |b| b.failures),
            Some(n) => self.int(n, &format!("{path}.failures"), 0, 1_000_000) as u32,
        };
        let cooldown = match cooldown {
            None => base.map_or(Duration::from_secs(30), |b| b.cooldown),
            Some(n) => {
                let d = self.duration(n, &format!("{path}.cooldown"));
                if d.is_zero() {
                    self.error(n, &format!("{path}.cooldown"), "must be greater than zero");
                }
                d
            }
        };
        (failures > 0).then_some(CircuitBreaker { failures, cooldown })
    }

    /// Reads one of [`RETRY_KEYS`] into `retry`.
    pub(crate) fn retry_field(&mut self, key: &str, n: &Node, path: &str, retry: &mut Retry) {
        match key {
            "retry" => retry.count = self.int(n, path, 0, 1000) as u32,
            "backoffPolicy" => {
                retry.backoff_policy = self.choice(
                    n,
                    path,
                    &[
                        ("exponential", BackoffPolicy::Exponential),
                        ("linear", BackoffPolicy::Linear),
                    ],
                )
            }
            "backoffDelay" => retry.backoff_delay = self.duration(n, path),
            "backoffMax" => retry.backoff_max = self.duration(n, path),
            "retryAfterMax" => retry.retry_after_max = self.duration(n, path),
            "timeout" => {
                retry.timeout = self.duration(n, path);
                if retry.timeout.is_zero() {
                    self.error(n, path, "must be greater than zero");
                }
            }
            _ => unreachable!("not a retry key: {key}"),
        }
    }

    fn string(&mut self, node: &Node, key: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            _ => {
                self.error(node, key, format!("must be a string, not {}", node.kind()));
                None
            }
        }
    }

    fn addr(&mut self, node: &Node, key: &str) -> SocketAddr {
        let text = node.scalar_text().unwrap_or_default();
        text.parse().unwrap_or_else(|_| {
            self.error(
                node,
                key,
                format!("'{text}' is not an address: use IP:PORT, e.g. 0.0.0.0:8080 or [::]:8080"),
            );
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }

    fn duration(&mut self, node: &Node, key: &str) -> Duration {
        let parsed = match &node.value {
            Value::Int(0) => Ok(Duration::ZERO),
            Value::Str(s) => units::parse_duration(s),
            _ => Err(format!(
                "must be a duration such as PT0.2S or 200ms, not {}",
                node.kind()
            )),
        };
        parsed.unwrap_or_else(|e| {
            self.error(node, key, e);
            Duration::ZERO
        })
    }

    fn size(&mut self, node: &Node, key: &str) -> u64 {
        let parsed = match &node.value {
            Value::Int(i) if *i >= 0 => Ok(*i as u64),
            Value::Str(s) => units::parse_size(s),
            _ => Err(format!("must be a size such as 4MiB, not {}", node.kind())),
        };
        parsed.unwrap_or_else(|e| {
            self.error(node, key, e);
            u64::MAX
        })
    }

    /// A size that must be positive.
    fn positive_size(&mut self, node: &Node, key: &str) -> u64 {
        match self.size(node, key) {
            0 => {
                self.error(node, key, "must be greater than zero");
                0
            }
            n => n,
        }
    }

    fn int(&mut self, node: &Node, key: &str, min: i64, max: i64) -> i64 {
        match node.value {
            Value::Int(i) if (min..=max).contains(&i) => i,
            Value::Int(i) => {
                self.error(node, key, format!("{i} is out of range {min}..={max}"));
                min
            }
            _ => {
                self.error(
                    node,
                    key,
                    format!("must be an integer, not {}", node.kind()),
                );
                min
            }
        }
    }

    fn choice<T: Copy>(&mut self, node: &Node, key: &str, options: &[(&str, T)]) -> T {
        let text = node.scalar_text().unwrap_or_default();
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == text) {
            return *v;
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        self.error(
            node,
            key,
            format!("'{text}' is not one of: {}", names.join(", ")),
        );
        options[0].1
    }

    fn list<'n>(&mut self, node: &'n Node, key: &str) -> &'n [Node] {
        match &node.value {
            Value::Seq(items) => items,
            Value::Null => &[],
            _ => {
                self.error(node, key, format!("must be a list, not {}", node.kind()));
                &[]
            }
        }
    }

    /// A secret: a string, or `{ valueFrom: { env: NAME } }` / `{ valueFrom: { file: PATH } }`.
    /// A secret that clients present as `Authorization: Bearer <token>`: it must be one
    /// RFC 6750 `b64token`, or no client could ever present it.
    fn bearer_token(&mut self, node: &Node, key: &str) -> Option<String> {
        let token = self.secret(node, key)?;
        if crate::http::auth::is_b64token(token.as_bytes()) {
            Some(token)
        } else {
            self.error(
                node,
                key,
                "a bearer token is letters, digits and -._~+/ followed by any number of =",
            );
            None
        }
    }

    /// An `ingress.tokens` entry: a secret, or `{value | valueFrom, brokers, types,
    /// sources}` (a token with a scope).
    fn ingress_token(&mut self, node: &Node, key: &str) -> Option<IngressToken> {
        let Value::Map(entries) = &node.value else {
            return self
                .bearer_token(node, key)
                .map(|value| IngressToken { value, scope: None });
        };
        if entries.len() == 1 && entries[0].0 == "valueFrom" {
            return self
                .bearer_token(node, key)
                .map(|value| IngressToken { value, scope: None });
        }
        let allowed = ["value", "valueFrom", "brokers", "types", "sources"];
        let mut scope = TokenScope::default();
        let mut value = None;
        for (name, line, child) in entries {
            let here = format!("{key}.{name}");
            match name.as_str() {
                "value" => value = self.bearer_token(child, &here),
                "valueFrom" => {
                    let secret = Node::new(
                        *line,
                        Value::Map(vec![("valueFrom".into(), *line, child.clone())]),
                    );
                    value = self.bearer_token(&secret, &here);
                }
                "brokers" | "types" | "sources" => {
                    let list: Vec<String> = self
                        .list(child, &here)
                        .iter()
                        .filter_map(|n| self.string(n, &here))
                        .collect();
                    if list.iter().any(String::is_empty) {
                        self.error(child, &here, "holds an empty value");
                    }
                    match name.as_str() {
                        "brokers" => scope.brokers = list,
                        "types" => scope.types = list,
                        _ => scope.sources = list,
                    }
                }
                _ => self.error_at(
                    *line,
                    &here,
                    format!("unknown field; expected one of: {}", allowed.join(", ")),
                ),
            }
        }
        let has_value = entries
            .iter()
            .any(|(k, _, _)| k == "value" || k == "valueFrom");
        if !has_value {
            self.error(
                node,
                key,
                "a scoped token needs its value: value or valueFrom",
            );
        }
        value.map(|value| IngressToken {
            value,
            scope: Some(scope),
        })
    }

    fn secret(&mut self, node: &Node, key: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) if !s.is_empty() => Some(s.clone()),
            Value::Null => None,
            Value::Map(entries) => {
                let from = entries
                    .iter()
                    .find(|(k, _, _)| k == "valueFrom")
                    .map(|(_, _, n)| n);
                let Some(Node {
                    value: Value::Map(src),
                    line,
                    ..
                }) = from.filter(|_| entries.len() == 1)
                else {
                    self.error(node, key, "a secret is a string or { valueFrom: { env: NAME } } or { valueFrom: { file: PATH } }");
                    return None;
                };
                match src.as_slice() {
                    [(kind, _, n)] if kind == "env" => {
                        let name = self.string(n, key)?;
                        match std::env::var(&name) {
                            Ok(v) if !v.is_empty() => Some(v),
                            _ => {
                                self.error(
                                    n,
                                    key,
                                    format!("environment variable {name} is not set"),
                                );
                                None
                            }
                        }
                    }
                    [(kind, _, n)] if kind == "file" => {
                        let path = self.string(n, key)?;
                        match std::fs::read_to_string(&path) {
                            Ok(v) => Some(v.trim_end_matches(['\n', '\r']).to_string()),
                            Err(e) => {
                                self.error(n, key, format!("cannot read secret file {path}: {e}"));
                                None
                            }
                        }
                    }
                    _ => {
                        self.error_at(*line, key, "valueFrom takes exactly one of env or file");
                        None
                    }
                }
            }
            _ => {
                self.error(
                    node,
                    key,
                    format!(
                        "a secret must be a string or a valueFrom mapping, not {}",
                        node.kind()
                    ),
                );
                None
            }
        }
    }

    /// `tracing.otlp.endpoint`: an http(s) base URL, without the signal's path (OTLP's
    /// rule for the endpoint of all signals: `/v1/traces` is added to it).
    fn otlp_endpoint(&mut self, node: &Node) -> Option<http::Uri> {
        let key = "tracing.otlp.endpoint";
        if matches!(node.value, Value::Null) {
            return None;
        }
        let text = self.string(node, key)?;
        match text.parse::<http::Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() =>
            {
                if u.query().is_some() {
                    self.error(
                        node,
                        key,
                        format!("'{text}' has a query; give the collector's base URL"),
                    );
                    None
                } else if u.path().trim_end_matches('/').ends_with("/v1/traces") {
                    self.error(
                        node,
                        key,
                        format!("'{text}' ends in /v1/traces, which is added to the endpoint: give the collector's base URL (e.g. http://otel-collector:4318)"),
                    );
                    None
                } else {
                    Some(u)
                }
            }
            _ => {
                self.error(
                    node,
                    key,
                    format!("'{text}' is not an absolute http:// or https:// URL"),
                );
                None
            }
        }
    }

    /// An optional file path: `None` when the key is null.
    fn optional_path(&mut self, node: &Node, key: &str) -> Option<PathBuf> {
        match &node.value {
            Value::Null => None,
            _ => self.string(node, key).map(PathBuf::from),
        }
    }

    /// `ingress.tls`: certFile and keyFile together, and an optional clientCaFile; the
    /// files are read and checked now, so a bad one stops the start with its key.
    fn ingress_tls(&mut self, user: &Node, defaults: &Node) -> Option<IngressTls> {
        let (cert_node, key_node) = (
            self.pick(user, defaults, "ingress.tls.certFile"),
            self.pick(user, defaults, "ingress.tls.keyFile"),
        );
        let cert = self.optional_path(cert_node, "ingress.tls.certFile");
        let key = self.optional_path(key_node, "ingress.tls.keyFile");
        let ca_node = self.pick(user, defaults, "ingress.tls.clientCaFile");
        let client_ca = self.optional_path(ca_node, "ingress.tls.clientCaFile");
        let cert_line = cert_node.line;
        if !self.cert_and_key_together(
            "ingress.tls",
            cert.is_some().then_some(cert_node),
            key.is_some().then_some(key_node),
        ) {
            return None;
        }
        let (Some(cert_file), Some(key_file)) = (cert, key) else {
            if client_ca.is_some() {
                self.error(
                    ca_node,
                    "ingress.tls.clientCaFile",
                    "client certificates need TLS: set ingress.tls.certFile and keyFile too",
                );
            }
            return None;
        };
        match crate::http::tls::server_config(&cert_file, &key_file, client_ca.as_deref()) {
            Ok(config) => Some(IngressTls {
                cert_file,
                key_file,
                client_ca_file: client_ca,
                config: Arc::new(config),
            }),
            Err(e) => {
                self.error_at(cert_line, "ingress.tls", e);
                None
            }
        }
    }

    /// A section's `certFile` and `keyFile` (each given: its node) go together: one
    /// alone is an error at its line, naming the one missing. `false` then.
    fn cert_and_key_together(
        &mut self,
        section: &str,
        cert: Option<&Node>,
        key: Option<&Node>,
    ) -> bool {
        let (at, missing) = match (cert, key) {
            (Some(n), None) => (n, "keyFile"),
            (None, Some(n)) => (n, "certFile"),
            _ => return true,
        };
        self.error(
            at,
            &format!("{section}.{missing}"),
            "certFile and keyFile go together; set both",
        );
        false
    }

    /// `storage.jetstream` when the backend is embedded (or not one): its keys are read,
    /// and when `report`, the first one set is an error, so that a forgotten or mistyped
    /// `storage.backend` does not pass unnoticed.
    fn jetstream_unused(&mut self, user: &Node, defaults: &Node, report: bool) {
        let mut set = Vec::new();
        for k in SCHEMA.iter().filter(|k| k.path.starts_with(JETSTREAM)) {
            self.pick(user, defaults, k.path);
            if let Some(n) = lookup(user, k.path).filter(|n| !matches!(n.value, Value::Null)) {
                set.push((k.path, n));
            }
        }
        // The first in the file (the environment's after it).
        let first_set = set.into_iter().min_by_key(|(_, n)| written_order(n));
        if let (true, Some((path, n))) = (report, first_set) {
            self.error(
                n,
                path,
                "storage.jetstream is set but storage.backend is embedded: \
                 set storage.backend: jetstream, or remove storage.jetstream",
            );
        }
    }

    /// `storage.jetstream`, with the backend `jetstream` (set at `backend`): the servers,
    /// the stream settings, one kind of credentials, TLS. The retention and dedupe
    /// fields are the caller's to fill.
    fn jetstream(&mut self, user: &Node, defaults: &Node, backend: &Node) -> JetStreamOptions {
        macro_rules! node {
            ($leaf:literal) => {
                self.pick(user, defaults, concat!("storage.jetstream.", $leaf))
            };
        }
        // Whether the user set a key (a defaulted one has no line of its own to blame).
        let set = |n: &Node| !matches!(n.value, Value::Null);
        let servers_key = "storage.jetstream.servers";
        let servers_node = node!("servers");
        let mut servers = Vec::new();
        let mut any_tls_url = false;
        let items = self.list(servers_node, servers_key);
        for (i, n) in items.iter().enumerate() {
            let key = format!("{servers_key}[{i}]");
            let Some(url) = self.string(n, &key) else {
                continue;
            };
            match nats_url(&url) {
                Ok(tls) => {
                    any_tls_url |= tls;
                    servers.push(url);
                }
                Err(e) => self.error(n, &key, e),
            }
        }
        if items.is_empty() && matches!(servers_node.value, Value::Seq(_) | Value::Null) {
            let at = if lookup(user, servers_key).is_some_and(set) {
                servers_node
            } else {
                backend
            };
            self.error(
                at,
                servers_key,
                "the jetstream backend needs at least one server, e.g. [nats://nats:4222]",
            );
        }
        let replicas = self.int(node!("replicas"), "storage.jetstream.replicas", 1, 5) as usize;
        let prefix_key = "storage.jetstream.streamPrefix";
        let prefix_node = node!("streamPrefix");
        let stream_prefix = self.string(prefix_node, prefix_key).unwrap_or_default();
        let prefix_ok = !stream_prefix.is_empty()
            && stream_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if matches!(prefix_node.value, Value::Str(_)) && !prefix_ok {
            self.error(
                prefix_node,
                prefix_key,
                format!(
                    "'{stream_prefix}' is not a stream prefix: one or more of A-Z, a-z, 0-9, '-' and '_'"
                ),
            );
        }
        let credentials = self.jetstream_credentials(
            node!("token"),
            node!("user"),
            node!("password"),
            node!("credsFile"),
        );
        let tls = self.jetstream_tls(
            node!("tls.caFile"),
            node!("tls.certFile"),
            node!("tls.keyFile"),
            any_tls_url,
        );
        JetStreamOptions {
            servers,
            replicas,
            stream_prefix,
            credentials,
            tls,
            dedupe_window: Duration::ZERO,
            max_age: Duration::ZERO,
            max_bytes: 0,
        }
    }

    /// At most one kind of credentials: a token, a user and password, or a creds file.
    fn jetstream_credentials(
        &mut self,
        token: &Node,
        user: &Node,
        password: &Node,
        creds: &Node,
    ) -> Credentials {
        let set = |n: &Node| !matches!(n.value, Value::Null);
        // Each kind set, by where it is written: user and password are one kind, the
        // first of them written standing for both.
        let mut kinds: Vec<(&str, &Node)> = [
            ("storage.jetstream.token", token),
            ("storage.jetstream.user", user),
            ("storage.jetstream.password", password),
            ("storage.jetstream.credsFile", creds),
        ]
        .into_iter()
        .filter(|(_, n)| set(n))
        .collect();
        kinds.sort_by_key(|(_, n)| written_order(n));
        let pair = |k: &str| k.ends_with(".user") || k.ends_with(".password");
        if let Some(second) = kinds.iter().filter(|(k, _)| pair(k)).nth(1) {
            let second = second.0;
            kinds.retain(|(k, _)| *k != second);
        }
        if let [(first, _), rest @ ..] = kinds.as_slice() {
            for (key, n) in rest {
                self.error(
                    n,
                    key,
                    format!(
                        "{first} is set too: set one of storage.jetstream.token, \
                         user and password, or credsFile"
                    ),
                );
            }
            if !rest.is_empty() {
                return Credentials::None;
            }
        }
        if set(token) {
            return self
                .secret(token, "storage.jetstream.token")
                .map_or(Credentials::None, Credentials::Token);
        }
        if set(creds) {
            let key = "storage.jetstream.credsFile";
            let Some(path) = self.optional_path(creds, key) else {
                return Credentials::None;
            };
            return match std::fs::read(&path) {
                Ok(_) => Credentials::CredsFile(path),
                Err(e) => {
                    self.error(
                        creds,
                        key,
                        format!("cannot read creds file {}: {e}", path.display()),
                    );
                    Credentials::None
                }
            };
        }
        match (set(user), set(password)) {
            (false, false) => Credentials::None,
            (true, false) => {
                self.error(
                    user,
                    "storage.jetstream.password",
                    "storage.jetstream.user needs a password: set both",
                );
                Credentials::None
            }
            (false, true) => {
                self.error(
                    password,
                    "storage.jetstream.user",
                    "storage.jetstream.password needs a user: set both",
                );
                Credentials::None
            }
            (true, true) => {
                let u = self.secret(user, "storage.jetstream.user");
                let p = self.secret(password, "storage.jetstream.password");
                match (u, p) {
                    (Some(u), Some(p)) => Credentials::UserPassword(u, p),
                    _ => Credentials::None,
                }
            }
        }
    }

    /// TLS to the NATS servers: on when any file is given or a server URL is `tls://`;
    /// each file given is read now, so a bad one stops the start with its key.
    fn jetstream_tls(
        &mut self,
        ca: &Node,
        cert: &Node,
        key: &Node,
        any_tls_url: bool,
    ) -> Option<Tls> {
        use rustls::pki_types::pem::PemObject as _;
        let (ca_key, cert_key, key_key) = (
            "storage.jetstream.tls.caFile",
            "storage.jetstream.tls.certFile",
            "storage.jetstream.tls.keyFile",
        );
        let ca_file = self.optional_path(ca, ca_key);
        let cert_file = self.optional_path(cert, cert_key);
        let key_file = self.optional_path(key, key_key);
        if let Some(p) = &ca_file {
            if let Err(e) = crate::http::tls::read_certs(p, "CA file") {
                self.error(ca, ca_key, e);
            }
        }
        if let Some(p) = &cert_file {
            if let Err(e) = crate::http::tls::read_certs(p, "certificate file") {
                self.error(cert, cert_key, e);
            }
        }
        if let Some(p) = &key_file {
            if let Err(e) = rustls::pki_types::PrivateKeyDer::from_pem_file(p) {
                self.error(
                    key,
                    key_key,
                    format!("cannot read a PEM private key from {}: {e}", p.display()),
                );
            }
        }
        self.cert_and_key_together(
            "storage.jetstream.tls",
            cert_file.is_some().then_some(cert),
            key_file.is_some().then_some(key),
        );
        let any_file = ca_file.is_some() || cert_file.is_some() || key_file.is_some();
        (any_file || any_tls_url).then_some(Tls {
            ca_file,
            cert_file,
            key_file,
        })
    }

    fn build(&mut self, user: &Node, defaults: &Node, file: Option<&Path>) -> Config {
        macro_rules! node {
            ($path:literal) => {
                self.pick(user, defaults, $path)
            };
        }
        let ingress = IngressConfig {
            listen: self.addr(node!("ingress.listen"), "ingress.listen"),
            max_event_bytes: self
                .positive_size(node!("ingress.maxEventBytes"), "ingress.maxEventBytes"),
            max_batch_bytes: self
                .positive_size(node!("ingress.maxBatchBytes"), "ingress.maxBatchBytes"),
            // At least the four required attributes and a few extensions.
            max_attributes: self.int(
                node!("ingress.maxAttributes"),
                "ingress.maxAttributes",
                8,
                10_000,
            ) as usize,
            max_attribute_bytes: self.positive_size(
                node!("ingress.maxAttributeBytes"),
                "ingress.maxAttributeBytes",
            ),
            tokens: {
                let items = self.list(node!("ingress.tokens"), "ingress.tokens");
                items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, n)| self.ingress_token(n, &format!("ingress.tokens[{i}]")))
                    .collect()
            },
            header_read_timeout: self.duration(
                node!("ingress.headerReadTimeout"),
                "ingress.headerReadTimeout",
            ),
            body_read_timeout: self
                .duration(node!("ingress.bodyReadTimeout"), "ingress.bodyReadTimeout"),
            min_body_rate: self.size(node!("ingress.minBodyRate"), "ingress.minBodyRate"),
            min_body_rate_after: self.duration(
                node!("ingress.minBodyRateAfter"),
                "ingress.minBodyRateAfter",
            ),
            max_connection_body_bytes: self.positive_size(
                node!("ingress.maxConnectionBodyBytes"),
                "ingress.maxConnectionBodyBytes",
            ),
            max_buffered_body_bytes: self.positive_size(
                node!("ingress.maxBufferedBodyBytes"),
                "ingress.maxBufferedBodyBytes",
            ),
            max_connections: self.int(
                node!("ingress.maxConnections"),
                "ingress.maxConnections",
                1,
                1 << 20,
            ) as usize,
            tls: self.ingress_tls(user, defaults),
        };
        // One request's body must fit the budgets it is read into (when the sizes read).
        let sizes_read = !self.errors.iter().any(|e| e.key.starts_with("ingress.max"));
        for (key, budget) in [
            (
                "ingress.maxConnectionBodyBytes",
                ingress.max_connection_body_bytes,
            ),
            (
                "ingress.maxBufferedBodyBytes",
                ingress.max_buffered_body_bytes,
            ),
        ] {
            if sizes_read && budget < ingress.max_batch_bytes.max(ingress.max_event_bytes) {
                let n = self.pick(user, defaults, key);
                self.error(
                    n,
                    key,
                    "must be at least ingress.maxBatchBytes and ingress.maxEventBytes",
                );
            }
        }
        let (mut metrics_public, mut health_public) = (false, false);
        for n in self.list(node!("admin.public"), "admin.public") {
            match n.scalar_text().as_deref() {
                Some("metrics") => metrics_public = true,
                Some("health") => health_public = true,
                _ => self.error(n, "admin.public", "each entry is metrics or health"),
            }
        }
        let admin = AdminConfig {
            listen: self.addr(node!("admin.listen"), "admin.listen"),
            token: {
                let n = node!("admin.token");
                self.bearer_token(n, "admin.token")
            },
            metrics_public,
            health_public,
        };
        let backend_node = node!("storage.backend");
        let backend = match backend_node.scalar_text().as_deref() {
            Some("embedded") => Some(Backend::Embedded),
            Some("jetstream") => Some(Backend::JetStream),
            other => {
                self.error(
                    backend_node,
                    "storage.backend",
                    format!(
                        "'{}' is not a backend: embedded or jetstream",
                        other.unwrap_or_default()
                    ),
                );
                None
            }
        };
        let durability_node = node!("storage.durability");
        let on_max_bytes_node = node!("storage.retention.onMaxBytes");
        let mut storage = StorageConfig {
            backend: backend.unwrap_or_default(),
            jetstream: None,
            path: self
                .string(node!("storage.path"), "storage.path")
                .map(PathBuf::from)
                .unwrap_or_default(),
            durability: self.choice(
                durability_node,
                "storage.durability",
                &[
                    ("fsync", Durability::Fsync),
                    ("relaxed", Durability::Relaxed),
                ],
            ),
            cache_capacity: self
                .positive_size(node!("storage.cacheCapacity"), "storage.cacheCapacity"),
            retention_max_age: self.duration(
                node!("storage.retention.maxAge"),
                "storage.retention.maxAge",
            ),
            retention_max_bytes: self.size(
                node!("storage.retention.maxBytes"),
                "storage.retention.maxBytes",
            ),
            refuse_at_max_bytes: self.choice(
                on_max_bytes_node,
                "storage.retention.onMaxBytes",
                &[("deleteOldest", false), ("refuseWrites", true)],
            ),
            min_free_bytes: self.size(node!("storage.minFreeBytes"), "storage.minFreeBytes"),
            dead_letters_max_count: self.int(
                node!("storage.deadLetters.maxCount"),
                "storage.deadLetters.maxCount",
                1,
                i64::MAX,
            ) as u64,
            dead_letters_max_age: self.duration(
                node!("storage.deadLetters.maxAge"),
                "storage.deadLetters.maxAge",
            ),
        };
        let brokers_node = node!("brokers");
        let mut brokers = Vec::new();
        for n in self.list(brokers_node, "brokers") {
            let Some(name) = self.string(n, "brokers") else {
                continue;
            };
            let valid = !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !name.starts_with('-');
            if !valid {
                self.error(
                    n,
                    "brokers",
                    format!("'{name}' is not a broker name: 1-63 of a-z, 0-9 and '-'"),
                );
            } else if brokers.contains(&name) {
                self.error(n, "brokers", format!("broker '{name}' is listed twice"));
            } else {
                brokers.push(name);
            }
        }
        if brokers.is_empty() {
            self.error(brokers_node, "brokers", "at least one broker is needed");
        }
        let key_node = node!("dedupe.key");
        let key =
            self.string(key_node, "dedupe.key")
                .and_then(|src| match DedupeKey::compile(&src) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        self.error(key_node, "dedupe.key", format!("CEL does not compile: {e}"));
                        None
                    }
                });
        let dedupe = DedupeConfig {
            window: self.duration(node!("dedupe.window"), "dedupe.window"),
            key: Arc::new(
                key.unwrap_or_else(|| DedupeKey::compile("id").expect("a constant expression")),
            ),
        };
        storage.jetstream = match backend {
            Some(Backend::JetStream) => {
                if storage.durability == Durability::Relaxed {
                    self.error(
                        durability_node,
                        "storage.durability",
                        "relaxed is not a mode of the jetstream backend: JetStream acknowledges \
                         an event once its replicas hold it; remove the key or use fsync",
                    );
                }
                if storage.refuse_at_max_bytes {
                    self.error(
                        on_max_bytes_node,
                        "storage.retention.onMaxBytes",
                        "refuseWrites is not supported by the jetstream backend: a stream \
                         discards its oldest events at maxBytes; use deleteOldest",
                    );
                }
                let mut options = self.jetstream(user, defaults, backend_node);
                options.dedupe_window = dedupe.window;
                options.max_age = storage.retention_max_age;
                options.max_bytes = storage.retention_max_bytes;
                Some(options)
            }
            // A bad backend is its own error; keys beside it are not held against it.
            other => {
                self.jetstream_unused(user, defaults, other == Some(Backend::Embedded));
                None
            }
        };
        let subscriptions_set =
            lookup(user, "subscriptions").is_some_and(|n| !matches!(n.value, Value::Null));
        let subscriptions = self
            .list(node!("subscriptions"), "subscriptions")
            .iter()
            .filter_map(|n| self.string(n, "subscriptions").map(PathBuf::from))
            .collect();
        let mut retry = Retry {
            count: 0,
            backoff_policy: BackoffPolicy::Exponential,
            backoff_delay: Duration::ZERO,
            backoff_max: Duration::ZERO,
            retry_after_max: Duration::ZERO,
            timeout: Duration::ZERO,
        };
        for key in RETRY_KEYS {
            let path = format!("delivery.{key}");
            let n = self.pick(user, defaults, &path);
            self.retry_field(key, n, &path, &mut retry);
        }
        let flow = Flow {
            rate_limit: self.rate_limit(
                Some(node!("delivery.rateLimit.perSecond")),
                Some(node!("delivery.rateLimit.burst")),
                "delivery.rateLimit",
                None,
            ),
            circuit_breaker: self.circuit_breaker(
                Some(node!("delivery.circuitBreaker.failures")),
                Some(node!("delivery.circuitBreaker.cooldown")),
                "delivery.circuitBreaker",
                None,
            ),
        };
        let delivery = DeliveryConfig {
            retry,
            flow,
            allow_addresses: {
                let key = "delivery.allowAddresses";
                let mut out = Vec::new();
                for n in self.list(node!("delivery.allowAddresses"), key) {
                    let text = n.scalar_text().unwrap_or_default();
                    match text.parse::<std::net::IpAddr>() {
                        Ok(ip) => out.push(ip.to_canonical()),
                        Err(_) => self.error(n, key, format!("'{text}' is not an IP address")),
                    }
                }
                out
            },
        };
        let replies = RepliesConfig {
            max_hops: self.int(node!("replies.maxHops"), "replies.maxHops", 0, 255) as u32,
        };
        let tracing = TracingConfig {
            otlp_endpoint: self.otlp_endpoint(node!("tracing.otlp.endpoint")),
        };
        let shutdown_grace_period =
            self.duration(node!("shutdown.gracePeriod"), "shutdown.gracePeriod");
        Config {
            file: file.map(Path::to_path_buf),
            ingress,
            admin,
            storage,
            brokers,
            dedupe,
            subscriptions,
            subscriptions_set,
            delivery,
            replies,
            tracing,
            shutdown_grace_period,
            from_env: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        from_yaml(Some(Path::new("s.yaml")), text, &env(&[]))
            .unwrap_err()
            .0
    }

    #[test]
    fn empty_config_is_the_embedded_defaults() {
        let c = from_yaml(None, "", &env(&[])).unwrap();
        assert_eq!(c.ingress.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.admin.listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.ingress.max_event_bytes, 4 << 20);
        assert_eq!(c.storage.path, PathBuf::from("./data"));
        assert_eq!(c.storage.durability, Durability::Fsync);
        assert_eq!(c.storage.cache_capacity, 8 << 20);
        assert_eq!(c.brokers, vec!["default"]);
        assert_eq!(c.dedupe.window, Duration::from_secs(600));
        assert_eq!(c.delivery.retry.backoff_delay, Duration::from_millis(200));
        assert_eq!(c.replies.max_hops, 8);
    }

    #[test]
    fn every_error_is_reported_with_line_and_key() {
        let errs = errors("ingress:\n  listen: nowhere\n  maxEventBytes: lots\nstorage:\n  durability: sometimes\n  colour: blue\nbogus: 1\n");
        let seen: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert!(seen.contains(&(2, "ingress.listen")), "{seen:?}");
        assert!(seen.contains(&(3, "ingress.maxEventBytes")), "{seen:?}");
        assert!(seen.contains(&(5, "storage.durability")), "{seen:?}");
        assert!(seen.contains(&(6, "storage.colour")), "{seen:?}");
        assert!(seen.contains(&(7, "bogus")), "{seen:?}");
        assert_eq!(errs.len(), 5, "{errs:?}");
        assert!(errs[0].to_string().starts_with("s.yaml:"));
    }

    #[test]
    fn environment_overrides_win_and_are_named_in_errors() {
        let c = from_yaml(
            None,
            "storage:\n  path: /from/file\n",
            &env(&[
                ("SWITCHYARD_STORAGE_PATH", "/var/lib/switchyard"),
                ("SWITCHYARD_BROKERS", "[a, b]"),
                ("SWITCHYARD_INGRESS_MAX_EVENT_BYTES", "1MiB"),
                ("SWITCHYARD_SUBSCRIPTIONS", "/etc/subs, /more"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.subscriptions,
            vec![PathBuf::from("/etc/subs"), PathBuf::from("/more")]
        );
        assert!(c.subscriptions_set);
        assert_eq!(c.storage.path, PathBuf::from("/var/lib/switchyard"));
        assert_eq!(c.brokers, vec!["a", "b"]);
        assert_eq!(c.ingress.max_event_bytes, 1 << 20);
        let errs = from_yaml(
            None,
            "",
            &env(&[
                ("SWITCHYARD_STORAGE_DURABILITY", "maybe"),
                ("SWITCHYARD_NOPE", "1"),
            ]),
        )
        .unwrap_err()
        .0;
        assert!(
            errs.iter()
                .any(|e| e.origin == "env SWITCHYARD_STORAGE_DURABILITY"
                    && e.key == "storage.durability"),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.origin == "env SWITCHYARD_NOPE"),
            "{errs:?}"
        );
    }

    #[test]
    fn a_bad_dedupe_expression_is_an_error_with_its_column() {
        let errs = errors("dedupe:\n  key: 'source +'\n");
        assert_eq!(errs[0].key, "dedupe.key");
        assert_eq!(errs[0].line, 2);
        assert!(errs[0].message.contains("column"), "{}", errs[0].message);
    }

    #[test]
    fn secrets_come_from_env_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "from-file\n").unwrap();
        let text = format!("ingress:\n  tokens:\n    - inline\n    - {{ valueFrom: {{ file: {} }} }}\n    - {{ valueFrom: {{ env: SWITCHYARD_TEST_UNSET_VAR }} }}\n", f.display());
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].line, 5);
        assert!(errs[0].message.contains("SWITCHYARD_TEST_UNSET_VAR"));
        let ok = from_yaml(
            None,
            &text.replace(
                "    - { valueFrom: { env: SWITCHYARD_TEST_UNSET_VAR } }\n",
                "",
            ),
            &env(&[]),
        )
        .unwrap();
        assert_eq!(
            ok.ingress.tokens,
            vec![
                IngressToken::from("inline"),
                IngressToken::from("from-file")
            ]
        );
    }

    #[test]
    fn every_key_of_the_schema_is_read_once_and_no_other() {
        let defaults = yaml::parse(&defaults_yaml()).unwrap().pop().unwrap();
        let empty = Node::new(0, Value::Map(Vec::new()));
        // Both backends read every key (the JetStream keys on either).
        let jetstream = yaml::parse(
            "storage:\n  backend: jetstream\n  jetstream:\n    servers: [nats://n:4222]\n",
        )
        .unwrap()
        .pop()
        .unwrap();
        for user in [&empty, &jetstream] {
            let mut v = Validator::default();
            v.build(user, &defaults, None);
            assert!(v.errors.is_empty(), "{:?}", v.errors);
            let mut picked = v.picked.into_inner();
            picked.sort();
            let mut schema: Vec<String> = SCHEMA.iter().map(|k| k.path.to_string()).collect();
            schema.sort();
            assert_eq!(picked, schema);
        }
    }

    /// A self-signed certificate and its key, as PEM files in `dir`.
    fn pem_files(dir: &Path) -> (PathBuf, PathBuf) {
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec!["nats".to_string()]).unwrap();
        let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key_pair.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    #[test]
    fn the_otlp_endpoint_is_off_by_default_and_a_base_url_when_set() {
        let c = from_yaml(None, "", &env(&[])).unwrap();
        assert_eq!(c.tracing.otlp_endpoint, None);
        let c = from_yaml(
            None,
            "tracing:\n  otlp:\n    endpoint: https://otel-collector:4318\n",
            &env(&[]),
        )
        .unwrap();
        assert_eq!(
            c.tracing.otlp_endpoint.map(|u| u.to_string()),
            Some("https://otel-collector:4318/".to_string())
        );
        let c = from_yaml(
            None,
            "",
            &env(&[("SWITCHYARD_TRACING_OTLP_ENDPOINT", "http://c:4318")]),
        )
        .unwrap();
        assert!(
            c.tracing.otlp_endpoint.is_some(),
            "set from the environment"
        );
        for (value, says) in [
            ("otel-collector:4318", "not an absolute http"),
            ("grpc://c:4317", "not an absolute http"),
            ("http://c:4318/v1/traces", "ends in /v1/traces"),
            ("http://c:4318?x=1", "has a query"),
            ("4318", "must be a string"),
        ] {
            let e = errors(&format!("tracing:\n  otlp:\n    endpoint: {value}\n"));
            assert_eq!(e.len(), 1, "{value}: {e:?}");
            assert_eq!((e[0].line, e[0].key.as_str()), (3, "tracing.otlp.endpoint"));
            assert!(e[0].message.contains(says), "{value}: {}", e[0].message);
        }
    }

    /// The (line, key) of each error of a config with `storage.backend: jetstream` and
    /// `body` under `storage.jetstream` (its first line is line 4).
    fn jetstream_errors(body: &str) -> Vec<(usize, String)> {
        let text = format!("storage:\n  backend: jetstream\n  jetstream:\n{body}");
        match from_yaml(Some(Path::new("s.yaml")), &text, &env(&[])) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| (e.line, e.key)).collect(),
        }
    }

    fn at(line: usize, key: &str) -> Vec<(usize, String)> {
        vec![(line, key.to_string())]
    }

    const SERVERS: &str = "    servers: [nats://n1:4222]\n";

    #[test]
    fn the_embedded_backend_has_no_jetstream_options() {
        let c = from_yaml(None, "storage:\n  backend: embedded\n", &env(&[])).unwrap();
        assert_eq!(c.storage.backend, Backend::Embedded);
        assert!(c.storage.jetstream.is_none());
        let c = from_yaml(None, "", &env(&[])).unwrap();
        assert_eq!(c.storage.backend, Backend::Embedded);
        assert!(c.storage.jetstream.is_none());
    }

    #[test]
    fn a_jetstream_config_becomes_its_options() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pem_files(dir.path());
        let password = dir.path().join("password");
        std::fs::write(&password, "s3cret\n").unwrap();
        let text = format!(
            "storage:
  backend: jetstream
  jetstream:
    servers:
      - nats://n1:4222
      - tls://n2.example.com
      - nats://[::1]:4223/
    replicas: 3
    streamPrefix: CI_events-1
    user: alice
    password: {{ valueFrom: {{ file: {} }} }}
    tls:
      caFile: {}
      certFile: {}
      keyFile: {}
  retention:
    maxAge: 1d
    maxBytes: 1GiB
dedupe:
  window: 5m
",
            password.display(),
            cert.display(),
            cert.display(),
            key.display()
        );
        let c = from_yaml(Some(Path::new("s.yaml")), &text, &env(&[])).unwrap();
        assert_eq!(c.storage.backend, Backend::JetStream);
        let js = c.storage.jetstream.expect("jetstream options");
        assert_eq!(
            js.servers,
            [
                "nats://n1:4222",
                "tls://n2.example.com",
                "nats://[::1]:4223/"
            ]
        );
        assert_eq!(js.replicas, 3);
        assert_eq!(js.stream_prefix, "CI_events-1");
        assert!(
            matches!(&js.credentials, Credentials::UserPassword(u, p) if u == "alice" && p == "s3cret"),
            "{:?}",
            js.credentials
        );
        let tls = js.tls.expect("tls");
        assert_eq!(tls.ca_file.as_deref(), Some(cert.as_path()));
        assert_eq!(tls.cert_file.as_deref(), Some(cert.as_path()));
        assert_eq!(tls.key_file.as_deref(), Some(key.as_path()));
        assert_eq!(js.dedupe_window, Duration::from_secs(300));
        assert_eq!(js.max_age, Duration::from_secs(86_400));
        assert_eq!(js.max_bytes, 1 << 30);
    }

    #[test]
    fn jetstream_defaults_credentials_and_tls() {
        let parse = |body: &str| {
            let text = format!("storage:\n  backend: jetstream\n  jetstream:\n{body}");
            from_yaml(None, &text, &env(&[]))
                .unwrap()
                .storage
                .jetstream
                .unwrap()
        };
        // The defaults: one replica, the prefix SWITCHYARD, no credentials, no TLS.
        let js = parse(SERVERS);
        assert_eq!(js.replicas, 1);
        assert_eq!(js.stream_prefix, "SWITCHYARD");
        assert!(matches!(js.credentials, Credentials::None));
        assert!(js.tls.is_none());
        assert_eq!(js.max_bytes, 10 << 30);
        // A tls:// server turns TLS on, with the system's roots.
        let js = parse("    servers: [nats://a, tls://b:4443]\n    token: t0k3n\n");
        assert!(matches!(&js.credentials, Credentials::Token(t) if t == "t0k3n"));
        let tls = js.tls.expect("tls:// asks for TLS");
        assert!(tls.ca_file.is_none() && tls.cert_file.is_none());
        // A creds file.
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("user.creds");
        std::fs::write(&creds, "-----BEGIN NATS USER JWT-----\n").unwrap();
        let js = parse(&format!("{SERVERS}    credsFile: {}\n", creds.display()));
        assert!(matches!(&js.credentials, Credentials::CredsFile(p) if p == &creds));
    }

    #[test]
    fn jetstream_needs_servers_with_good_urls() {
        // No servers at all: blamed on the backend's line.
        assert_eq!(jetstream_errors(""), at(2, "storage.jetstream.servers"));
        assert_eq!(
            jetstream_errors("    servers: []\n"),
            at(4, "storage.jetstream.servers")
        );
        assert_eq!(
            jetstream_errors(
                "    servers:\n      - nats://n1:4222\n      - http://n2:4222\n      - nats://n3:99999\n"
            ),
            vec![
                (6, "storage.jetstream.servers[1]".to_string()),
                (7, "storage.jetstream.servers[2]".to_string())
            ]
        );
        for good in [
            "nats://n1",
            "nats://n1:4222",
            "tls://n1.example.com:4443",
            "nats://10.0.0.1:4222/",
            "nats://[::1]",
            "nats://[fd00::1]:4222",
        ] {
            assert!(nats_url(good).is_ok(), "{good}");
        }
        assert_eq!(nats_url("tls://n1"), Ok(true));
        assert_eq!(nats_url("nats://n1"), Ok(false));
        for bad in [
            "",
            "n1:4222",
            "http://n1:4222",
            "nats://",
            "nats://:4222",
            "nats://n1:",
            "nats://n1:0",
            "nats://n1:65536",
            "nats://n1:port",
            "nats://n1:4222/path",
            "nats://u:p@n1:4222",
            "nats://[::1",
            "nats://[nope]:4222",
            "nats://[::1]4222",
            "nats://n 1:4222",
        ] {
            let e = nats_url(bad).expect_err(bad);
            assert!(e.contains("is not a NATS server URL"), "{e}");
        }
    }

    #[test]
    fn jetstream_replicas_and_prefix_are_checked() {
        for replicas in ["0", "6", "three"] {
            assert_eq!(
                jetstream_errors(&format!("{SERVERS}    replicas: {replicas}\n")),
                at(5, "storage.jetstream.replicas"),
                "{replicas}"
            );
        }
        for prefix in ["a.b", "''", "has space", "SW>", "ÄB"] {
            assert_eq!(
                jetstream_errors(&format!("{SERVERS}    streamPrefix: {prefix}\n")),
                at(5, "storage.jetstream.streamPrefix"),
                "{prefix}"
            );
        }
        assert!(jetstream_errors(&format!(
            "{SERVERS}    replicas: 5\n    streamPrefix: ok_Prefix-2\n"
        ))
        .is_empty());
    }

    #[test]
    fn jetstream_takes_one_kind_of_credentials() {
        // token and user (and password): the second kind is the error.
        assert_eq!(
            jetstream_errors(&format!(
                "{SERVERS}    token: t\n    user: u\n    password: p\n"
            )),
            at(6, "storage.jetstream.user")
        );
        assert_eq!(
            jetstream_errors(&format!("{SERVERS}    password: p\n    token: t\n")),
            at(6, "storage.jetstream.token")
        );
        // user and password go together.
        assert_eq!(
            jetstream_errors(&format!("{SERVERS}    user: u\n")),
            at(5, "storage.jetstream.password")
        );
        assert_eq!(
            jetstream_errors(&format!("{SERVERS}    password: p\n")),
            at(5, "storage.jetstream.user")
        );
        // A creds file must be readable.
        let errs = from_yaml(
            Some(Path::new("s.yaml")),
            &format!("storage:\n  backend: jetstream\n  jetstream:\n{SERVERS}    credsFile: /nonexistent/user.creds\n"),
            &env(&[]),
        )
        .unwrap_err()
        .0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(
            (errs[0].line, errs[0].key.as_str()),
            (5, "storage.jetstream.credsFile")
        );
        assert!(
            errs[0].message.contains("/nonexistent/user.creds"),
            "{errs:?}"
        );
        assert_eq!(
            jetstream_errors(&format!("{SERVERS}    token: t\n    credsFile: /x.creds\n")),
            at(6, "storage.jetstream.credsFile")
        );
        // A secret from an unset variable is named at its line.
        assert_eq!(
            jetstream_errors(&format!(
                "{SERVERS}    token:\n      valueFrom:\n        env: SWITCHYARD_TEST_UNSET_NATS_TOKEN\n"
            )),
            at(7, "storage.jetstream.token")
        );
    }

    #[test]
    fn jetstream_tls_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pem_files(dir.path());
        assert_eq!(
            jetstream_errors(&format!(
                "{SERVERS}    tls:\n      certFile: {}\n",
                cert.display()
            )),
            at(6, "storage.jetstream.tls.keyFile")
        );
        assert_eq!(
            jetstream_errors(&format!(
                "{SERVERS}    tls:\n      keyFile: {}\n",
                key.display()
            )),
            at(6, "storage.jetstream.tls.certFile")
        );
        assert_eq!(
            jetstream_errors(&format!(
                "{SERVERS}    tls:\n      caFile: /nonexistent/ca.pem\n"
            )),
            at(6, "storage.jetstream.tls.caFile")
        );
        // A key where a certificate belongs.
        assert_eq!(
            jetstream_errors(&format!(
                "{SERVERS}    tls:\n      certFile: {}\n      keyFile: {}\n",
                key.display(),
                key.display()
            )),
            at(6, "storage.jetstream.tls.certFile")
        );
        assert!(jetstream_errors(&format!(
            "{SERVERS}    tls:\n      caFile: {}\n",
            cert.display()
        ))
        .is_empty());
    }

    #[test]
    fn jetstream_keys_need_the_jetstream_backend() {
        for text in [
            "storage:\n  jetstream:\n    replicas: 3\n",
            "storage:\n  backend: embedded\n  jetstream:\n    replicas: 3\n    servers: [nats://n1]\n",
        ] {
            let errs = errors(text);
            assert_eq!(errs.len(), 1, "{errs:?}");
            let line = text.lines().position(|l| l.contains("replicas")).unwrap() + 1;
            assert_eq!(
                (errs[0].line, errs[0].key.as_str()),
                (line, "storage.jetstream.replicas")
            );
            assert!(
                errs[0]
                    .message
                    .contains("storage.jetstream is set but storage.backend is embedded"),
                "{errs:?}"
            );
        }
        // From the environment too.
        let errs = from_yaml(
            None,
            "",
            &env(&[("SWITCHYARD_STORAGE_JETSTREAM_SERVERS", "nats://n1")]),
        )
        .unwrap_err()
        .0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].origin, "env SWITCHYARD_STORAGE_JETSTREAM_SERVERS");
        assert_eq!(errs[0].key, "storage.jetstream.servers");
        // A mistyped backend is its own error, and the only one.
        let errs = errors("storage:\n  backend: jetstrem\n  jetstream:\n    replicas: 3\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!((errs[0].line, errs[0].key.as_str()), (2, "storage.backend"));
        assert!(
            errs[0].message.contains("embedded or jetstream"),
            "{errs:?}"
        );
    }

    #[test]
    fn jetstream_refuses_embedded_only_settings() {
        let text =
            |extra: &str| format!("storage:\n  backend: jetstream\n  jetstream:\n{SERVERS}{extra}");
        let errs = errors(&text("  retention:\n    onMaxBytes: refuseWrites\n"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(
            (errs[0].line, errs[0].key.as_str()),
            (6, "storage.retention.onMaxBytes")
        );
        let errs = errors(&text("  durability: relaxed\n"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(
            (errs[0].line, errs[0].key.as_str()),
            (5, "storage.durability")
        );
        // Their defaults, spelled out, are fine; on embedded, so are the others.
        let env = env(&[]);
        assert!(from_yaml(
            None,
            &text("  durability: fsync\n  retention:\n    onMaxBytes: deleteOldest\n"),
            &env
        )
        .is_ok());
        assert!(from_yaml(
            None,
            "storage:\n  durability: relaxed\n  retention:\n    onMaxBytes: refuseWrites\n",
            &env
        )
        .is_ok());
    }

    #[test]
    fn every_jetstream_error_is_reported() {
        let errs = errors(
            "storage:
  backend: jetstream
  durability: relaxed
  jetstream:
    servers: [nats://ok, 'ftp://no']
    replicas: 0
    streamPrefix: a.b
    token: t
    user: u
    tls:
      keyFile: /nonexistent/key.pem
",
        );
        let seen: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(
            seen,
            [
                (3, "storage.durability"),
                (5, "storage.jetstream.servers[1]"),
                (6, "storage.jetstream.replicas"),
                (7, "storage.jetstream.streamPrefix"),
                (9, "storage.jetstream.user"),
                (11, "storage.jetstream.tls.keyFile"),
                (11, "storage.jetstream.tls.certFile"),
            ]
        );
        assert!(
            errs[1]
                .to_string()
                .starts_with("s.yaml:5: storage.jetstream.servers[1]: 'ftp://no'"),
            "{}",
            errs[1]
        );
    }

    #[test]
    fn jetstream_settings_come_from_the_environment() {
        let c = from_yaml(
            None,
            "",
            &env(&[
                ("SWITCHYARD_STORAGE_BACKEND", "jetstream"),
                (
                    "SWITCHYARD_STORAGE_JETSTREAM_SERVERS",
                    "nats://n1:4222, tls://n2",
                ),
                ("SWITCHYARD_STORAGE_JETSTREAM_REPLICAS", "3"),
                ("SWITCHYARD_STORAGE_JETSTREAM_STREAM_PREFIX", "FLEET"),
                ("SWITCHYARD_STORAGE_JETSTREAM_TOKEN", "t0k3n"),
            ]),
        )
        .unwrap();
        let js = c.storage.jetstream.unwrap();
        assert_eq!(js.servers, ["nats://n1:4222", "tls://n2"]);
        assert_eq!((js.replicas, js.stream_prefix.as_str()), (3, "FLEET"));
        assert!(matches!(&js.credentials, Credentials::Token(t) if t == "t0k3n"));
        assert!(js.tls.is_some());
        let errs = from_yaml(
            None,
            "",
            &env(&[
                ("SWITCHYARD_STORAGE_BACKEND", "jetstream"),
                ("SWITCHYARD_STORAGE_JETSTREAM_SERVERS", "nats://n1,n2:4222"),
            ]),
        )
        .unwrap_err()
        .0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].origin, "env SWITCHYARD_STORAGE_JETSTREAM_SERVERS");
        assert_eq!(errs[0].key, "storage.jetstream.servers[1]");
    }

    #[test]
    fn the_defaults_document_nests_every_key_under_its_sections() {
        let text = defaults_yaml();
        assert!(
            text.starts_with("ingress:\n  listen: 0.0.0.0:8080\n"),
            "{text}"
        );
        assert!(
            text.contains("\n  tls:\n    certFile: null\n    keyFile: null\n"),
            "{text}"
        );
        assert!(text.contains("\nbrokers: [default]\n"), "{text}");
        let c = from_yaml(None, "", &env(&[])).unwrap();
        assert_eq!(c.dedupe.window, Duration::from_secs(600));
        assert_eq!(c.storage.retention_max_bytes, 10 << 30);
    }

    #[test]
    fn tokens_must_be_presentable_as_bearer_tokens() {
        let errs = errors("ingress:\n  tokens:\n    - good-token.v2==\n    - has space\nadmin:\n  token: \"semi;colon\"\n");
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(
            (errs[0].line, errs[0].key.as_str()),
            (4, "ingress.tokens[1]")
        );
        assert_eq!((errs[1].line, errs[1].key.as_str()), (6, "admin.token"));
        assert!(errs[0].message.contains("bearer token"), "{errs:?}");
    }

    #[test]
    fn broker_names_are_checked() {
        let errs = errors("brokers: [default, Bad_Name, default]\n");
        assert_eq!(errs.len(), 2, "{errs:?}");
    }
}
