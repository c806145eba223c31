//! Which stored events a listing keeps: `--type`, `--source` (exact, or a prefix ending
//! in `*`) and `--since`.

use serde_json::Value;

use super::CliError;

/// An attribute pattern of `events`: the exact text, or a prefix when it ends in `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    pub fn parse(s: &str) -> Self {
        match s.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.to_string()),
            None => Pattern::Exact(s.to_string()),
        }
    }

    pub fn matches(&self, s: &str) -> bool {
        match self {
            Pattern::Exact(e) => s == e,
            Pattern::Prefix(p) => s.starts_with(p.as_str()),
        }
    }
}

/// Which stored events `events` shows: by type, by source, and those that arrived at or
/// after a time. The admin API lists by sequence only, so the client filters each page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub ty: Option<Pattern>,
    pub source: Option<Pattern>,
    /// RFC 3339 seconds and nanoseconds.
    pub since: Option<(i64, u32)>,
}

impl EventFilter {
    /// The filter of `--type`, `--source` and `--since`; a time that is not RFC 3339 is
    /// a usage error.
    pub fn new(
        ty: Option<&str>,
        source: Option<&str>,
        since: Option<&str>,
    ) -> Result<Self, CliError> {
        let since = since
            .map(|t| {
                crate::event::validate::parse_rfc3339(t)
                    .map_err(|e| CliError::Usage(format!("--since {t}: {e}")))
            })
            .transpose()?;
        Ok(EventFilter {
            ty: ty.map(Pattern::parse),
            source: source.map(Pattern::parse),
            since,
        })
    }

    /// Whether every record passes (no flag was given).
    pub fn is_empty(&self) -> bool {
        self == &EventFilter::default()
    }

    /// Whether a record of the events listing (`{seq, arrival, event}`) passes.
    pub fn matches(&self, record: &Value) -> bool {
        let attr = |name: &str| record["event"][name].as_str().unwrap_or_default();
        self.ty.as_ref().is_none_or(|p| p.matches(attr("type")))
            && self
                .source
                .as_ref()
                .is_none_or(|p| p.matches(attr("source")))
            && self.since.is_none_or(|since| {
                record["arrival"]
                    .as_str()
                    .and_then(|a| crate::event::validate::parse_rfc3339(a).ok())
                    .is_some_and(|arrival| arrival >= since)
            })
    }
}

/// `--time` of `send`: `now` is this moment in RFC 3339; anything else is sent as given
/// (the broker validates it).
pub fn event_time(arg: &str) -> String {
    if arg != "now" {
        return arg.to_string();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    crate::event::protobuf::format_rfc3339(now.as_secs() as i64, now.subsec_nanos())
}
