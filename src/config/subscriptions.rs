//! Subscription files: `apiVersion: switchyard.dev/v1alpha1`, `kind: Subscription`,
//! several documents per file allowed. Parsed with line numbers and validated into
//! [`Subscription`]s (compiled filters, parsed URIs, checked backoffs) in one pass that
//! reports every error with its file, line and field.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use http::header::{HeaderName, HeaderValue};
use http::Uri;

use super::yaml::{self, Node, Value};
use super::{
    Config, ConfigError, ConfigErrors, DeliveryConfig, Flow, Retry, Validator, RETRY_KEYS,
};
use crate::event::validate::{check_name, parse_rfc3339};
use crate::expr::cesql::Expression;
use crate::expr::filter::{CelFilter, Dialect, Filter};
use crate::expr::transform::Transform;

pub const API_VERSION: &str = "switchyard.dev/v1alpha1";
pub const KIND: &str = "Subscription";

/// How a sink receives events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkFormat {
    Binary,
    Structured,
    /// The body and its `Content-Type` alone, without CloudEvents headers, for
    /// endpoints that are not CloudEvents consumers.
    Plain,
}

/// One destination of a subscription; each sink is its own lane.
#[derive(Clone)]
pub struct Sink {
    pub uri: Uri,
    pub format: SinkFormat,
    /// Extra request headers, checked at load; values may be secrets, are marked
    /// sensitive and are never printed.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The sink's own CA and client certificate, when it has them.
    pub tls: Option<SinkTls>,
    /// Standard Webhooks signing keys, when the sink wants signed requests.
    pub signing: Option<Signing>,
    /// What the sink is sent instead of the event as stored, when it has one.
    pub transform: Option<Arc<Transform>>,
    /// How the sink's requests prove who sends them, when it wants that; shared by the
    /// lane's attempts (with the token they hold).
    pub auth: Option<Arc<SinkAuth>>,
}

/// A sink's `auth`: where its bearer token comes from, and the token held now.
pub struct SinkAuth {
    pub source: TokenSource,
    /// The token last obtained, and until when it is used without a second look.
    pub held: tokio::sync::Mutex<Option<HeldToken>>,
    /// Why the last try to obtain a token failed, for the lane's last error.
    pub failure: std::sync::Mutex<Option<String>>,
}

/// A token obtained for a sink.
#[derive(Clone)]
pub struct HeldToken {
    pub value: String,
    /// Used as it is until then; looked at again (the file) or fetched anew (OAuth2) after.
    pub fresh_until: std::time::Instant,
    /// The token file's modification time and length when it was read.
    pub file_stamp: Option<(std::time::SystemTime, u64)>,
}

/// Where a sink's bearer token comes from.
pub enum TokenSource {
    /// Read from a file, and read again when it changes (a Kubernetes projected
    /// service-account token).
    File(PathBuf),
    /// The OAuth2 client credentials grant (RFC 6749 §4.4).
    OAuth2 {
        token_url: Uri,
        client_id: String,
        client_secret: String,
        scopes: Vec<String>,
        audience: Option<String>,
    },
}

impl fmt::Debug for HeldToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldToken")
            .field("value", &"(secret)")
            .field("fresh_until", &self.fresh_until)
            .finish()
    }
}

impl fmt::Debug for SinkAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            TokenSource::File(path) => write!(f, "SinkAuth(bearerTokenFile {})", path.display()),
            TokenSource::OAuth2 {
                token_url,
                client_id,
                ..
            } => {
                write!(f, "SinkAuth(oauth2 {token_url} as {client_id})")
            }
        }
    }
}

impl SinkAuth {
    pub fn new(source: TokenSource) -> SinkAuth {
        SinkAuth {
            source,
            held: tokio::sync::Mutex::new(None),
            failure: std::sync::Mutex::new(None),
        }
    }
}

/// The keys a sink's requests are signed with (Standard Webhooks, HMAC-SHA256): one
/// signature per key, so a receiver can rotate its secret. Never printed.
#[derive(Clone)]
pub struct Signing {
    pub keys: Vec<Vec<u8>>,
}

impl fmt::Debug for Signing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signing({} keys)", self.keys.len())
    }
}

/// A sink's TLS settings, loaded and checked at config time.
#[derive(Clone)]
pub struct SinkTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub config: std::sync::Arc<rustls::ClientConfig>,
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        let tls = self.tls.as_ref().map(|t| (&t.ca_file, &t.cert_file));
        f.debug_struct("Sink")
            .field("uri", &self.uri)
            .field("format", &self.format)
            .field("headers", &names)
            .field("tls", &tls)
            .field("signing", &self.signing)
            .field("transform", &self.transform)
            .field("auth", &self.auth)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    Unordered,
    Ordered,
}

/// Knative's DeliverySpec, with Switchyard's additions.
#[derive(Debug, Clone)]
pub struct DeliverySpec {
    pub retry: Retry,
    /// The lane's rate limit and circuit breaker.
    pub flow: Flow,
    pub dead_letter_sink: Option<Sink>,
    pub ordering: Ordering,
    pub max_in_flight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyMode {
    /// A reply event is appended to the subscription's broker.
    Broker,
    Ignore,
}

/// Where a new subscription starts in its broker's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// With the next event routed.
    Latest,
    /// From the oldest retained event.
    Earliest,
    /// From the first event that arrived at or after this time (ns since the epoch).
    Time(u64),
}

/// A validated subscription.
#[derive(Debug)]
pub struct Subscription {
    pub name: String,
    /// Where it was defined, for messages.
    pub file: PathBuf,
    pub line: usize,
    pub broker: String,
    pub filter: Filter,
    pub sinks: Vec<Sink>,
    pub delivery: DeliverySpec,
    pub reply: ReplyMode,
    pub start_from: StartFrom,
}

/// The subscription files named by the config: files, and `*.yaml`/`*.yml` directly in
/// folders (dot-entries skipped, so Kubernetes ConfigMap mounts work). Sorted.
pub fn files(config: &Config) -> Result<Vec<PathBuf>, ConfigErrors> {
    let origin = config
        .file
        .as_ref()
        .map_or_else(|| "<defaults>".to_string(), |p| p.display().to_string());
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for path in &config.subscriptions {
        if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| {
                            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                            !name.starts_with('.')
                                && (name.ends_with(".yaml") || name.ends_with(".yml"))
                                && p.is_file()
                        })
                        .collect();
                    found.sort();
                    out.extend(found);
                }
                Err(e) => errors.push(ConfigError {
                    origin: path.display().to_string(),
                    line: 0,
                    key: String::new(),
                    message: format!("cannot read the folder: {e}"),
                }),
            }
        } else if path.is_file() {
            out.push(path.clone());
        } else if config.subscriptions_set {
            errors.push(ConfigError {
                origin: origin.clone(),
                line: 0,
                key: "subscriptions".into(),
                message: format!("{} does not exist", path.display()),
            });
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Loads and validates every subscription the config names.
pub fn load(config: &Config) -> Result<Vec<Subscription>, ConfigErrors> {
    let paths = files(config)?;
    let mut sources = Vec::with_capacity(paths.len());
    let mut errors = Vec::new();
    for p in paths {
        match std::fs::read_to_string(&p) {
            Ok(text) => sources.push((p, text)),
            Err(e) => errors.push(ConfigError {
                origin: p.display().to_string(),
                line: 0,
                key: String::new(),
                message: format!("cannot read: {e}"),
            }),
        }
    }
    match from_sources(&sources, &config.brokers, &config.delivery) {
        Ok(subs) if errors.is_empty() => Ok(subs),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(ConfigErrors(mut more)) => {
            errors.append(&mut more);
            Err(ConfigErrors(errors))
        }
    }
}

/// Validates subscription documents from `(file, text)` pairs.
pub fn from_sources(
    sources: &[(PathBuf, String)],
    brokers: &[String],
    defaults: &DeliveryConfig,
) -> Result<Vec<Subscription>, ConfigErrors> {
    let mut errors = Vec::new();
    let mut subs: Vec<Subscription> = Vec::new();
    let mut names: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for (file, text) in sources {
        let mut v = Validator {
            origin: file.display().to_string(),
            ..Validator::default()
        };
        match yaml::parse(text) {
            Err(e) => v.error_at(e.line, "", format!("YAML syntax error: {}", e.message)),
            Ok(docs) => {
                for doc in docs.iter().filter(|d| !matches!(d.value, Value::Null)) {
                    if let Some(sub) = subscription(&mut v, file, doc, brokers, defaults) {
                        if let Some((other_file, other_line)) = names.get(&sub.name) {
                            let msg = format!("the name '{}' is already used at {other_file}:{other_line}; names are unique across all files", sub.name);
                            v.error_at(sub.line, "metadata.name", msg);
                        } else {
                            names.insert(sub.name.clone(), (v.origin.clone(), sub.line));
                            subs.push(sub);
                        }
                    }
                }
            }
        }
        errors.append(&mut v.errors);
    }
    if errors.is_empty() {
        Ok(subs)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The entries of a mapping node, reporting keys not in `allowed`; `None` (and an
/// error) when the node is not a mapping.
pub(super) fn fields<'n>(
    v: &mut Validator,
    node: &'n Node,
    path: &str,
    allowed: &[&str],
) -> Option<Vec<(&'n str, usize, &'n Node)>> {
    let Value::Map(entries) = &node.value else {
        v.error(
            node,
            path,
            format!("must be a mapping, not {}", node.kind()),
        );
        return None;
    };
    let mut out = Vec::with_capacity(entries.len());
    for (key, line, child) in entries {
        let here = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        if allowed.contains(&key.as_str()) {
            out.push((key.as_str(), *line, child));
        } else {
            v.error_at(
                *line,
                &here,
                format!("unknown field; expected one of: {}", allowed.join(", ")),
            );
        }
    }
    Some(out)
}

pub(super) fn get<'n>(entries: &[(&str, usize, &'n Node)], key: &str) -> Option<&'n Node> {
    entries
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, _, n)| *n)
}

fn subscription(
    v: &mut Validator,
    file: &Path,
    doc: &Node,
    brokers: &[String],
    defaults: &DeliveryConfig,
) -> Option<Subscription> {
    let top = fields(v, doc, "", &["apiVersion", "kind", "metadata", "spec"])?;
    match get(&top, "apiVersion").and_then(Node::scalar_text) {
        Some(a) if a == API_VERSION => {}
        Some(a) => v.error(
            get(&top, "apiVersion").unwrap_or(doc),
            "apiVersion",
            format!("'{a}' is not {API_VERSION}"),
        ),
        None => v.error(
            doc,
            "apiVersion",
            format!("missing; expected {API_VERSION}"),
        ),
    }
    match get(&top, "kind").and_then(Node::scalar_text) {
        Some(k) if k == KIND => {}
        Some(k) => v.error(
            get(&top, "kind").unwrap_or(doc),
            "kind",
            format!("'{k}' is not {KIND}"),
        ),
        None => v.error(doc, "kind", format!("missing; expected {KIND}")),
    }
    let name_node = match get(&top, "metadata") {
        Some(m) => fields(v, m, "metadata", &["name", "labels", "annotations"])
            .and_then(|f| get(&f, "name")),
        None => None,
    };
    let Some(name_node) = name_node else {
        v.error(
            doc,
            "metadata.name",
            "missing; every subscription needs a name",
        );
        return None;
    };
    let name = v.string(name_node, "metadata.name")?;
    let valid_name = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if !valid_name {
        v.error(name_node, "metadata.name", format!("'{name}' is not a valid name: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"));
    }
    let Some(spec_node) = get(&top, "spec") else {
        v.error(doc, "spec", "missing");
        return None;
    };
    let spec = fields(
        v,
        spec_node,
        "spec",
        &[
            "broker",
            "filter",
            "sinks",
            "delivery",
            "reply",
            "startFrom",
        ],
    )?;
    let broker = match get(&spec, "broker") {
        None => "default".to_string(),
        Some(n) => v.string(n, "spec.broker").unwrap_or_default(),
    };
    if !brokers.contains(&broker) {
        let n = get(&spec, "broker").unwrap_or(spec_node);
        v.error(
            n,
            "spec.broker",
            format!(
                "there is no broker '{broker}'; the config's brokers are: {}",
                brokers.join(", ")
            ),
        );
    }
    let filter = match get(&spec, "filter") {
        None => Filter::default(),
        Some(n) => filter(v, n),
    };
    let sinks = match get(&spec, "sinks") {
        None => {
            v.error(
                spec_node,
                "spec.sinks",
                "missing; a subscription needs at least one sink",
            );
            Vec::new()
        }
        Some(n) => {
            let items = v.list(n, "spec.sinks");
            if items.is_empty() && matches!(n.value, Value::Seq(_) | Value::Null) {
                v.error(
                    n,
                    "spec.sinks",
                    "is empty; a subscription needs at least one sink",
                );
            }
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let path = format!("spec.sinks[{i}]");
                if let Some(s) = sink(v, item, &path, defaults) {
                    if out.iter().any(|o: &Sink| o.uri == s.uri) {
                        v.error(item, &path, format!("{} is listed twice", s.uri));
                    } else {
                        out.push(s);
                    }
                }
            }
            out
        }
    };
    let delivery = delivery(v, get(&spec, "delivery"), defaults);
    let reply = match get(&spec, "reply") {
        None => ReplyMode::Broker,
        Some(n) => v.choice(
            n,
            "spec.reply",
            &[("broker", ReplyMode::Broker), ("ignore", ReplyMode::Ignore)],
        ),
    };
    let start_from = match get(&spec, "startFrom") {
        None => StartFrom::Latest,
        Some(n) => match n.scalar_text().as_deref() {
            Some("latest") => StartFrom::Latest,
            Some("earliest") => StartFrom::Earliest,
            Some(t) => match parse_rfc3339(t) {
                Ok((secs, nanos)) => StartFrom::Time(
                    u64::try_from(secs)
                        .unwrap_or(0)
                        .saturating_mul(1_000_000_000)
                        .saturating_add(u64::from(nanos)),
                ),
                Err(_) => {
                    v.error(
                        n,
                        "spec.startFrom",
                        format!("'{t}' is not latest, earliest or an RFC 3339 time"),
                    );
                    StartFrom::Latest
                }
            },
            None => {
                v.error(
                    n,
                    "spec.startFrom",
                    "must be latest, earliest or an RFC 3339 time",
                );
                StartFrom::Latest
            }
        },
    };
    Some(Subscription {
        name,
        file: file.to_path_buf(),
        line: doc.line.max(1),
        broker,
        filter,
        sinks,
        delivery,
        reply,
        start_from,
    })
}

fn filter(v: &mut Validator, node: &Node) -> Filter {
    let mut out = Filter::default();
    let Some(parts) = fields(v, node, "spec.filter", &["attributes", "filters", "cel"]) else {
        return out;
    };
    if let Some(n) = get(&parts, "attributes") {
        out.attributes = pairs(v, n, "spec.filter.attributes");
    }
    if let Some(n) = get(&parts, "filters") {
        for (i, item) in v.list(n, "spec.filter.filters").iter().enumerate() {
            if let Some(d) = dialect(v, item, &format!("spec.filter.filters[{i}]")) {
                out.filters.push(d);
            }
        }
    }
    if let Some(n) = get(&parts, "cel") {
        if let Some(src) = v.string(n, "spec.filter.cel") {
            match CelFilter::compile(&src) {
                Ok(c) => out.cel = Some(c),
                Err(e) => v.error(
                    n,
                    "spec.filter.cel",
                    format!("CEL does not compile at column {}: {}", e.column, e.message),
                ),
            }
        }
    }
    out
}

/// Whether `name` (the key of `here`, on `line`) is a CloudEvents attribute name; when
/// it is not, the error says so.
pub(super) fn attribute_name(v: &mut Validator, line: usize, here: &str, name: &str) -> bool {
    match check_name(name) {
        Ok(()) => true,
        Err(e) => {
            v.error_at(
                line,
                here,
                format!("'{name}' is not a CloudEvents attribute name: {}", e.detail),
            );
            false
        }
    }
}

/// Attribute name → value pairs: names must be valid attribute names, values non-empty.
fn pairs(v: &mut Validator, node: &Node, path: &str) -> Vec<(String, String)> {
    let Value::Map(entries) = &node.value else {
        v.error(
            node,
            path,
            format!(
                "must be a mapping of attribute names to values, not {}",
                node.kind()
            ),
        );
        return Vec::new();
    };
    if entries.is_empty() {
        v.error(node, path, "is empty; name at least one attribute");
    }
    let mut out = Vec::new();
    for (name, line, value) in entries {
        let here = format!("{path}.{name}");
        if !attribute_name(v, *line, &here, name) {
            continue;
        }
        match value.scalar_text() {
            Some(s) if !s.is_empty() => out.push((name.clone(), s)),
            Some(_) => v.error(value, &here, "the value is empty"),
            None => v.error(
                value,
                &here,
                format!("the value must be a string, not {}", value.kind()),
            ),
        }
    }
    out
}

/// One Subscriptions API filter expression: a mapping with exactly one dialect.
fn dialect(v: &mut Validator, node: &Node, path: &str) -> Option<Dialect> {
    let Value::Map(entries) = &node.value else {
        v.error(node, path, format!("a filter is a mapping with one dialect (exact, prefix, suffix, all, any, not, sql), not {}", node.kind()));
        return None;
    };
    let [(name, line, body)] = entries.as_slice() else {
        let found: Vec<&str> = entries.iter().map(|(k, _, _)| k.as_str()).collect();
        v.error(
            node,
            path,
            format!(
                "a filter has exactly one dialect; found {}",
                if found.is_empty() {
                    "none".to_string()
                } else {
                    found.join(", ")
                }
            ),
        );
        return None;
    };
    let here = format!("{path}.{name}");
    let nested = |v: &mut Validator, body: &Node| -> Option<Vec<Dialect>> {
        let items = match &body.value {
            Value::Seq(items) => items,
            _ => {
                v.error(
                    body,
                    &here,
                    format!("must be a list of filters, not {}", body.kind()),
                );
                return None;
            }
        };
        if items.is_empty() {
            v.error(body, &here, "must hold at least one filter");
            return None;
        }
        let parsed: Vec<Option<Dialect>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| dialect(v, item, &format!("{here}[{i}]")))
            .collect();
        parsed.into_iter().collect()
    };
    match name.as_str() {
        "exact" => Some(Dialect::Exact(pairs(v, body, &here))),
        "prefix" => Some(Dialect::Prefix(pairs(v, body, &here))),
        "suffix" => Some(Dialect::Suffix(pairs(v, body, &here))),
        "all" => nested(v, body).map(Dialect::All),
        "any" => nested(v, body).map(Dialect::Any),
        "not" => dialect(v, body, &here).map(|d| Dialect::Not(Box::new(d))),
        "sql" => {
            let src = v.string(body, &here)?;
            match Expression::compile(&src) {
                Ok(e) => Some(Dialect::Sql(e)),
                Err(e) => {
                    v.error(
                        body,
                        &here,
                        format!(
                            "CESQL does not compile at column {}: {}",
                            e.column, e.message
                        ),
                    );
                    None
                }
            }
        }
        other => {
            v.error_at(*line, &here, format!("unknown filter dialect '{other}'; expected exact, prefix, suffix, all, any, not or sql"));
            None
        }
    }
}

fn sink(v: &mut Validator, node: &Node, path: &str, d: &DeliveryConfig) -> Option<Sink> {
    let f = fields(
        v,
        node,
        path,
        &[
            "uri",
            "format",
            "headers",
            "tls",
            "signing",
            "transform",
            "auth",
        ],
    )?;
    let Some(uri_node) = get(&f, "uri") else {
        v.error(node, &format!("{path}.uri"), "missing");
        return None;
    };
    let text = v.string(uri_node, &format!("{path}.uri"))?;
    let uri = match text.parse::<Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() => u,
        _ => {
            v.error(
                uri_node,
                &format!("{path}.uri"),
                format!("'{text}' is not an absolute http:// or https:// URI"),
            );
            return None;
        }
    };
    if let Some(problem) = uri.authority().and_then(port_problem) {
        v.error(uri_node, &format!("{path}.uri"), problem);
        return None;
    }
    // Every notation the resolver reads as an address (`2852039166`, `0xa9fea9fe`…),
    // not only the dotted one: the connector's check after DNS is the second line.
    let literal = uri.host().and_then(crate::http::address::host_address);
    if literal.is_some_and(|ip| crate::http::address::is_refused_metadata(ip, &d.allow_addresses)) {
        v.error(
            uri_node,
            &format!("{path}.uri"),
            "is a cloud metadata address; deliveries do not go there unless delivery.allowAddresses lists it",
        );
        return None;
    }
    let format = match get(&f, "format") {
        None => SinkFormat::Binary,
        Some(n) => v.choice(
            n,
            &format!("{path}.format"),
            &[
                ("binary", SinkFormat::Binary),
                ("structured", SinkFormat::Structured),
                ("plain", SinkFormat::Plain),
            ],
        ),
    };
    let mut headers = Vec::new();
    if let Some(h) = get(&f, "headers") {
        if let Value::Map(entries) = &h.value {
            for (name, line, value) in entries {
                let here = format!("{path}.headers.{name}");
                let Ok(hn) = HeaderName::from_bytes(name.as_bytes()) else {
                    v.error_at(
                        *line,
                        &here,
                        format!("'{name}' is not a valid HTTP header name"),
                    );
                    continue;
                };
                let Some(secret) = v.secret(value, &here) else {
                    continue;
                };
                // Checked here, not at send time: a value HTTP cannot carry (an env var
                // or file with a newline in it) would otherwise be left out of every
                // request without a word. The message names the header, never the value.
                match HeaderValue::from_str(&secret) {
                    Ok(mut hv) => {
                        hv.set_sensitive(true);
                        headers.push((hn, hv));
                    }
                    Err(_) => v.error_at(
                        *line,
                        &here,
                        format!("the value of header {name} is not a valid HTTP header value: it holds a newline or another control character (look at the variable or file it comes from)"),
                    ),
                }
            }
        } else {
            v.error(
                h,
                &format!("{path}.headers"),
                format!(
                    "must be a mapping of header names to values, not {}",
                    h.kind()
                ),
            );
        }
    }
    let tls = get(&f, "tls").and_then(|n| sink_tls(v, n, &format!("{path}.tls")));
    let signing = get(&f, "signing").and_then(|n| signing(v, n, &format!("{path}.signing")));
    let transform = get(&f, "transform")
        .and_then(|n| super::transform::transform(v, n, &format!("{path}.transform"), format));
    let auth = get(&f, "auth").and_then(|n| sink_auth(v, n, &format!("{path}.auth"), d));
    if auth.is_some()
        && headers
            .iter()
            .any(|(n, _)| n == http::header::AUTHORIZATION)
    {
        v.error(
            node,
            &format!("{path}.headers.Authorization"),
            "the sink's auth sets Authorization; leave it out of headers",
        );
    }
    Some(Sink {
        uri,
        format,
        headers,
        tls,
        signing,
        transform,
        auth,
    })
}

/// A sink's `auth`: `bearerTokenFile: PATH` or `oauth2: {tokenUrl, clientId,
/// clientSecret, scopes, audience}`.
fn sink_auth(
    v: &mut Validator,
    node: &Node,
    path: &str,
    d: &DeliveryConfig,
) -> Option<Arc<SinkAuth>> {
    let f = fields(v, node, path, &["bearerTokenFile", "oauth2"])?;
    match f.as_slice() {
        [("bearerTokenFile", _, n)] => {
            let here = format!("{path}.bearerTokenFile");
            let file = PathBuf::from(v.string(n, &here)?);
            if let Err(e) = std::fs::metadata(&file) {
                v.error(n, &here, format!("cannot read {}: {e}", file.display()));
                return None;
            }
            Some(Arc::new(SinkAuth::new(TokenSource::File(file))))
        }
        [("oauth2", _, n)] => {
            let here = format!("{path}.oauth2");
            let o = fields(
                v,
                n,
                &here,
                &["tokenUrl", "clientId", "clientSecret", "scopes", "audience"],
            )?;
            let required = |v: &mut Validator, key: &str| match get(&o, key) {
                Some(n) => Some(n),
                None => {
                    v.error(n, &format!("{here}.{key}"), "missing");
                    None
                }
            };
            let url_node = required(v, "tokenUrl");
            let id_node = required(v, "clientId");
            let secret_node = required(v, "clientSecret");
            let token_url = url_node.and_then(|n| {
                let key = format!("{here}.tokenUrl");
                let text = v.string(n, &key)?;
                match text.parse::<Uri>() {
                    Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() => {
                        let literal = u.host().and_then(crate::http::address::host_address);
                        if literal.is_some_and(|ip| crate::http::address::is_refused_metadata(ip, &d.allow_addresses)) {
                            v.error(n, &key, "is a cloud metadata address; requests do not go there unless delivery.allowAddresses lists it");
                            return None;
                        }
                        Some(u)
                    }
                    _ => {
                        v.error(n, &key, format!("'{text}' is not an absolute http:// or https:// URI"));
                        None
                    }
                }
            });
            let client_id = id_node.and_then(|n| v.string(n, &format!("{here}.clientId")));
            let client_secret =
                secret_node.and_then(|n| v.secret(n, &format!("{here}.clientSecret")));
            let scopes: Vec<String> = get(&o, "scopes")
                .map(|n| {
                    let key = format!("{here}.scopes");
                    v.list(n, &key)
                        .iter()
                        .filter_map(|s| v.string(s, &key))
                        .collect()
                })
                .unwrap_or_default();
            let audience =
                get(&o, "audience").and_then(|n| v.string(n, &format!("{here}.audience")));
            Some(Arc::new(SinkAuth::new(TokenSource::OAuth2 {
                token_url: token_url?,
                client_id: client_id?,
                client_secret: client_secret?,
                scopes,
                audience,
            })))
        }
        _ => {
            v.error(node, path, "holds one of bearerTokenFile or oauth2");
            None
        }
    }
}

/// Why the port of `authority` is not one a connection can use: the `http` crate keeps
/// a port it cannot read as a `u16` (`99999`, `8o80`) in the URI but reports none, and
/// the connector then goes to the scheme's default port instead. An empty port (`a:`)
/// means the default (RFC 3986 §3.2.3).
fn port_problem(authority: &http::uri::Authority) -> Option<String> {
    let text = authority.as_str();
    let host_port = text.rsplit_once('@').map_or(text, |(_, h)| h);
    // After an IPv6 literal's `]`, or after the first `:` of anything else.
    let after_host = match host_port.rfind(']') {
        Some(end) => &host_port[end + 1..],
        None => host_port.find(':').map_or("", |i| &host_port[i..]),
    };
    let port = after_host.strip_prefix(':')?;
    match port.parse::<u16>() {
        _ if port.is_empty() => None,
        Ok(1..) => None,
        _ => Some(format!(
            "'{port}' is not a port: a port is a number from 1 to 65535"
        )),
    }
}

/// `signing: { secrets: [whsec_…, …] }`: each secret a string or a `valueFrom`
/// reference, `whsec_` followed by the base64 key.
fn signing(v: &mut Validator, node: &Node, path: &str) -> Option<Signing> {
    let f = fields(v, node, path, &["secrets"])?;
    let here = format!("{path}.secrets");
    let Some(list) = get(&f, "secrets") else {
        v.error(node, &here, "missing; list one or more whsec_ secrets");
        return None;
    };
    let Value::Seq(items) = &list.value else {
        v.error(list, &here, format!("must be a list, not {}", list.kind()));
        return None;
    };
    let mut keys = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let here = format!("{here}[{i}]");
        let Some(secret) = v.secret(item, &here) else {
            continue;
        };
        let key = secret
            .strip_prefix("whsec_")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .filter(|k| !k.is_empty());
        match key {
            Some(k) => keys.push(k),
            // The message names the problem, never the value.
            None => v.error(
                item,
                &here,
                "a signing secret is whsec_ followed by a base64 key",
            ),
        }
    }
    if items.is_empty() {
        v.error(list, &here, "list one or more whsec_ secrets");
    }
    (!keys.is_empty() && keys.len() == items.len()).then_some(Signing { keys })
}

/// `tls: { caFile, certFile, keyFile }`: files are read and checked now.
fn sink_tls(v: &mut Validator, node: &Node, path: &str) -> Option<SinkTls> {
    let f = fields(v, node, path, &["caFile", "certFile", "keyFile"])?;
    let file = |v: &mut Validator, key: &str| {
        get(&f, key)
            .and_then(|n| v.string(n, &format!("{path}.{key}")))
            .map(PathBuf::from)
    };
    let ca_file = file(v, "caFile");
    let cert_file = file(v, "certFile");
    let key_file = file(v, "keyFile");
    if cert_file.is_some() != key_file.is_some() {
        v.error(node, path, "certFile and keyFile go together");
        return None;
    }
    let client = cert_file.as_deref().zip(key_file.as_deref());
    match crate::http::tls::client_config(ca_file.as_deref(), client) {
        Ok(config) => Some(SinkTls {
            ca_file,
            cert_file,
            config: std::sync::Arc::new(config),
        }),
        Err(e) => {
            v.error(node, path, e);
            None
        }
    }
}

fn delivery(v: &mut Validator, node: Option<&Node>, d: &DeliveryConfig) -> DeliverySpec {
    let mut spec = DeliverySpec {
        retry: d.retry.clone(),
        flow: d.flow,
        dead_letter_sink: None,
        ordering: Ordering::Unordered,
        max_in_flight: 32,
    };
    let Some(node) = node else { return spec };
    let allowed: Vec<&str> = RETRY_KEYS
        .iter()
        .copied()
        .chain([
            "deadLetterSink",
            "ordering",
            "maxInFlight",
            "rateLimit",
            "circuitBreaker",
        ])
        .collect();
    let Some(f) = fields(v, node, "spec.delivery", &allowed) else {
        return spec;
    };
    for (key, _, n) in f {
        let path = format!("spec.delivery.{key}");
        match key {
            k if RETRY_KEYS.contains(&k) => v.retry_field(k, n, &path, &mut spec.retry),
            "deadLetterSink" => spec.dead_letter_sink = sink(v, n, &path, d),
            "ordering" => {
                spec.ordering = v.choice(
                    n,
                    &path,
                    &[
                        ("unordered", Ordering::Unordered),
                        ("ordered", Ordering::Ordered),
                    ],
                )
            }
            "maxInFlight" => spec.max_in_flight = v.int(n, &path, 1, 10_000) as u32,
            "rateLimit" => {
                if let Some(f) = fields(v, n, &path, &["perSecond", "burst"]) {
                    spec.flow.rate_limit = v.rate_limit(
                        get(&f, "perSecond"),
                        get(&f, "burst"),
                        &path,
                        d.flow.rate_limit,
                    );
                }
            }
            "circuitBreaker" => {
                if let Some(f) = fields(v, n, &path, &["failures", "cooldown"]) {
                    spec.flow.circuit_breaker = v.circuit_breaker(
                        get(&f, "failures"),
                        get(&f, "cooldown"),
                        &path,
                        d.flow.circuit_breaker,
                    );
                }
            }
            _ => {}
        }
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> DeliveryConfig {
        super::super::from_yaml(None, "", &Default::default())
            .unwrap()
            .delivery
    }

    fn load_one(text: &str) -> Result<Vec<Subscription>, Vec<ConfigError>> {
        from_sources(
            &[(PathBuf::from("subs.yaml"), text.to_string())],
            &["default".into(), "ci".into()],
            &defaults(),
        )
        .map_err(|e| e.0)
    }

    const GOOD: &str = r#"apiVersion: switchyard.dev/v1alpha1
kind: Subscription
metadata:
  name: prod-pipeline-failures
spec:
  broker: default
  filter:
    attributes:
      type: dev.tekton.event.pipelinerun.failed.v1
    filters:
      - prefix: { source: /apis/ }
      - not: { exact: { subject: ignored } }
    cel: data.pipelineRun.metadata.namespace == "prod"
  sinks:
    - uri: http://notifier.ci.svc:8080/
    - uri: https://audit.example.com/events
      format: structured
      headers:
        X-Team: ci
  delivery:
    retry: 3
    backoffPolicy: linear
    backoffDelay: 200ms
    deadLetterSink: { uri: "http://dlq.ci.svc:8080/" }
    ordering: ordered
  reply: ignore
  startFrom: 2024-01-01T00:00:00Z
"#;

    #[test]
    fn the_design_example_validates() {
        let subs = load_one(GOOD).unwrap();
        let s = &subs[0];
        assert_eq!(s.name, "prod-pipeline-failures");
        assert_eq!(s.sinks.len(), 2);
        assert_eq!(s.sinks[1].format, SinkFormat::Structured);
        assert_eq!(s.filter.filters.len(), 2);
        assert!(s.filter.cel.is_some());
        assert_eq!(s.delivery.retry.count, 3);
        assert_eq!(
            s.delivery.retry.backoff_delay,
            std::time::Duration::from_millis(200)
        );
        assert_eq!(s.delivery.ordering, Ordering::Ordered);
        assert!(s.delivery.dead_letter_sink.is_some());
        assert_eq!(s.reply, ReplyMode::Ignore);
        assert_eq!(s.start_from, StartFrom::Time(1_704_067_200_000_000_000));
    }

    fn errors_of(text: &str) -> Vec<(usize, String, String)> {
        load_one(text)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.line, e.key, e.message))
            .collect()
    }

    fn doc(spec: &str) -> String {
        format!("apiVersion: switchyard.dev/v1alpha1\nkind: Subscription\nmetadata:\n  name: s\nspec:\n{spec}")
    }

    #[test]
    fn each_invalid_case_names_its_line_and_field() {
        let sinks = "  sinks: [{uri: 'http://a/'}]\n";
        let table: Vec<(String, usize, &str, &str)> = vec![
            (doc(&format!("{sinks}  colour: blue\n")), 7, "spec.colour", "unknown field"),
            (doc(&format!("{sinks}  broker: nope\n")), 7, "spec.broker", "no broker 'nope'"),
            (doc("  sinks: [{uri: 'ftp://a/'}]\n"), 6, "spec.sinks[0].uri", "http"),
            (doc("  sinks: [{uri: 'not a uri'}]\n"), 6, "spec.sinks[0].uri", "absolute"),
            (doc("  sinks: []\n"), 6, "spec.sinks", "empty"),
            (doc("  filter: {}\n"), 6, "spec.sinks", "missing"),
            (doc(&format!("{sinks}  delivery:\n    backoffDelay: soon\n")), 8, "spec.delivery.backoffDelay", "not a duration"),
            (doc(&format!("{sinks}  filter:\n    cel: 'type == '\n")), 8, "spec.filter.cel", "column"),
            (doc(&format!("{sinks}  filter:\n    attributes:\n      Type: x\n")), 9, "spec.filter.attributes.Type", "attribute name"),
            (doc(&format!("{sinks}  filter:\n    filters:\n      - exact: {{type: a}}\n        prefix: {{type: b}}\n")), 9, "spec.filter.filters[0]", "exactly one dialect"),
            (doc(&format!("{sinks}  filter:\n    filters:\n      - all: []\n")), 9, "spec.filter.filters[0].all", "at least one"),
            (doc(&format!("{sinks}  filter:\n    filters:\n      - any: []\n")), 9, "spec.filter.filters[0].any", "at least one"),
            (doc(&format!("{sinks}  filter:\n    filters:\n      - not: {{exact: {{type: a}}, suffix: {{type: b}}}}\n")), 9, "spec.filter.filters[0].not", "exactly one dialect"),
            (doc(&format!("{sinks}  filter:\n    filters:\n      - exact: {{type: ''}}\n")), 9, "spec.filter.filters[0].exact.type", "empty"),
            (doc(&format!("{sinks}  filter:\n    filters:\n      - prefix: {{}}\n")), 9, "spec.filter.filters[0].prefix", "empty"),
            (doc(&format!("{sinks}  filter:\n    filters:\n      - regex: {{type: a}}\n")), 9, "spec.filter.filters[0].regex", "unknown filter dialect"),
            (doc(&format!("{sinks}  filter:\n    filters:\n      - sql: \"type = 'a' AND\"\n")), 9, "spec.filter.filters[0].sql", "CESQL does not compile at column 15"),
            (doc(&format!("{sinks}  filter:\n    filters:\n      - not: {{sql: \"NOPE(type)\"}}\n")), 9, "spec.filter.filters[0].not.sql", "column 1: no function NOPE"),
            (doc(&format!("{sinks}  startFrom: yesterday\n")), 7, "spec.startFrom", "latest, earliest"),
            (doc(&format!("{sinks}  reply: always\n")), 7, "spec.reply", "not one of"),
            (doc("  sinks: [{uri: 'http://a:99999/'}]\n"), 6, "spec.sinks[0].uri", "'99999' is not a port"),
            (doc("  sinks: [{uri: 'http://a:0/'}]\n"), 6, "spec.sinks[0].uri", "'0' is not a port"),
            (doc("  sinks: [{uri: 'http://u:p@a:8o80/'}]\n"), 6, "spec.sinks[0].uri", "'8o80' is not a port"),
            (doc("  sinks: [{uri: 'http://[::1]:65536/'}]\n"), 6, "spec.sinks[0].uri", "'65536' is not a port"),
            (doc("  sinks:\n    - uri: http://a/\n      headers:\n        'X Team': ci\n"), 9, "spec.sinks[0].headers.X Team", "not a valid HTTP header name"),
            (doc("  sinks:\n    - uri: http://a/\n      headers:\n        X-Team: \"c\\ni\"\n"), 9, "spec.sinks[0].headers.X-Team", "not a valid HTTP header value"),
            (doc("  sinks:\n    - uri: http://a/\n      headers:\n        X-Team: \"c\\x7fi\"\n"), 9, "spec.sinks[0].headers.X-Team", "control character"),
            ("apiVersion: v1\nkind: Subscription\nmetadata: {name: s}\nspec: {sinks: [{uri: 'http://a/'}]}\n".into(), 1, "apiVersion", "switchyard.dev/v1alpha1"),
        ];
        for (text, line, key, message) in table {
            let errs = errors_of(&text);
            assert!(
                errs.iter()
                    .any(|(l, k, m)| *l == line && k == key && m.contains(message)),
                "expected {key} at line {line} ({message}) in {errs:?}\n{text}"
            );
        }
    }

    #[test]
    fn ports_in_range_and_empty_ports_validate() {
        for uri in [
            "http://a:/",
            "http://a:1/",
            "http://a:8080/",
            "http://[::1]:65535/",
            "http://[::1]/",
            "http://u:p@a/",
            "https://u:p@a:443/",
        ] {
            let text = doc(&format!("  sinks: [{{uri: '{uri}'}}]\n"));
            assert!(load_one(&text).is_ok(), "{uri}: {:?}", errors_of(&text));
        }
    }

    #[test]
    fn names_are_unique_across_files_and_every_error_is_reported() {
        let a = doc("  sinks: [{uri: 'http://a/'}]\n");
        let b = format!(
            "{a}---\n{}",
            doc("  sinks: [{uri: 'http://b/'}]\n  broker: nope\n")
        );
        let sources = [(PathBuf::from("a.yaml"), a), (PathBuf::from("b.yaml"), b)];
        let errs = from_sources(&sources, &["default".into()], &defaults())
            .unwrap_err()
            .0;
        assert!(
            errs.iter().any(|e| e.origin == "b.yaml"
                && e.key == "metadata.name"
                && e.message.contains("a.yaml:1")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.origin == "b.yaml" && e.key == "spec.broker"),
            "{errs:?}"
        );
    }

    #[test]
    fn header_secrets_are_not_printed() {
        let subs = load_one(&doc("  sinks:\n    - uri: http://a/\n      headers:\n        Authorization: Bearer hunter2\n")).unwrap();
        let printed = format!("{:?}", subs[0].sinks);
        assert!(printed.contains("authorization"));
        assert!(!printed.contains("hunter2"));
    }
}
