//! W3C Trace Context (`traceparent`, `tracestate`): parsed from the ingress request, kept
//! with the event as the CloudEvents distributed-tracing extension's attributes of the
//! same names, and passed on with every request the broker sends for the event (each a
//! new hop: the same trace id, a new span id).

/// The extension attributes (and HTTP headers) of the trace context.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The longest `tracestate` kept (W3C Trace Context §3.3.1.5).
pub const TRACESTATE_MAX: usize = 512;

/// A `traceparent` (version 00): `00-<trace id>-<parent id>-<flags>`, lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: String,
    pub parent_id: String,
    pub flags: String,
}

impl TraceParent {
    /// Reads a `traceparent` value; `None` for one that is not well formed (W3C Trace
    /// Context §3.2: such a header is ignored).
    pub fn parse(value: &str) -> Option<TraceParent> {
        let mut parts = value.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, n: usize| {
            s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        // A future version may add fields after these four; 00 has exactly four.
        let more = parts.next().is_some();
        if !hex(version, 2) || version == "ff" || (version == "00" && more) {
            return None;
        }
        if !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2) {
            return None;
        }
        if trace.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
            return None;
        }
        Some(TraceParent {
            trace_id: trace.to_string(),
            parent_id: parent.to_string(),
            flags: flags.to_string(),
        })
    }

    /// The same trace, one hop on: a new span id as the parent of what follows.
    pub fn child(&self) -> TraceParent {
        TraceParent {
            trace_id: self.trace_id.clone(),
            parent_id: new_span_id(),
            flags: self.flags.clone(),
        }
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "00-{}-{}-{}", self.trace_id, self.parent_id, self.flags)
    }
}

/// Eight random bytes in hex, never all zeros.
pub fn new_span_id() -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 8];
    loop {
        if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
            // No system randomness: a hash of the time and a counter still differs per
            // span, which is all a span id needs.
            use std::hash::BuildHasher as _;
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            bytes = std::collections::hash_map::RandomState::new()
                .hash_one(n)
                .to_be_bytes();
        }
        if bytes != [0; 8] {
            return bytes.iter().map(|b| format!("{b:02x}")).collect();
        }
    }
}

/// `event` with the trace context as its `traceparent` (and `tracestate`) extension
/// attributes, unless it carries a `traceparent` of its own already (the producer's
/// word wins).
pub fn with_trace_context(
    event: crate::event::Event,
    traceparent: &TraceParent,
    tracestate: Option<&str>,
) -> crate::event::Event {
    if event.get(TRACEPARENT).is_some() {
        return event;
    }
    set_trace_context(event, traceparent, tracestate)
}

/// `event` with the trace context as its `traceparent` (and `tracestate`) extension
/// attributes, in place of any it carried (the broker's own span, when spans are
/// exported, is what follows the event from there).
pub fn set_trace_context(
    event: crate::event::Event,
    traceparent: &TraceParent,
    tracestate: Option<&str>,
) -> crate::event::Event {
    use crate::event::{AttrValue, Event};
    let (mut attributes, data) = event.into_parts();
    attributes.retain(|(n, _)| n != TRACESTATE && n != TRACEPARENT);
    attributes.push((
        TRACEPARENT.into(),
        AttrValue::String(traceparent.to_string()),
    ));
    if let Some(state) = kept_tracestate(tracestate) {
        attributes.push((TRACESTATE.into(), AttrValue::String(state.to_string())));
    }
    // Two string attributes of checked ASCII added to a valid event keep it valid.
    Event::from_trusted(attributes, data)
}

/// The `tracestate` kept with an event: one that is not empty, printable ASCII, and
/// at most [`TRACESTATE_MAX`] long (W3C Trace Context §3.3.1.5: a longer one may be
/// dropped).
pub fn kept_tracestate(tracestate: Option<&str>) -> Option<&str> {
    tracestate.filter(|s| {
        !s.is_empty() && s.len() <= TRACESTATE_MAX && s.bytes().all(|b| (0x20..0x7f).contains(&b))
    })
}

/// The count and bytes (names and values) of `event`'s attributes once this trace
/// context is set on it ([`set_trace_context`]), worked out without building it.
pub fn attributes_with_trace_context(
    event: &crate::event::Event,
    traceparent: &TraceParent,
    tracestate: Option<&str>,
) -> (usize, u64) {
    let (mut count, mut bytes) = (0, 0);
    for (n, v) in event.attributes() {
        if n != TRACEPARENT && n != TRACESTATE {
            count += 1;
            bytes += (n.len() + v.text_len()) as u64;
        }
    }
    // `00-<32>-<16>-<2>`.
    let traceparent_len = 3
        + traceparent.trace_id.len()
        + 1
        + traceparent.parent_id.len()
        + 1
        + traceparent.flags.len();
    count += 1;
    bytes += (TRACEPARENT.len() + traceparent_len) as u64;
    if let Some(state) = kept_tracestate(tracestate) {
        count += 1;
        bytes += (TRACESTATE.len() + state.len()) as u64;
    }
    (count, bytes)
}

/// The trace context an event carries (its `traceparent` extension), when it is well
/// formed.
pub fn of_event(event: &crate::event::Event) -> Option<TraceParent> {
    event.get_str(TRACEPARENT).and_then(TraceParent::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attributes_with_a_trace_context_are_counted_as_setting_it_makes_them() {
        let tp =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let event = crate::event::json::decode_event(&bytes::Bytes::from_static(
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","traceparent":"00-11111111111111111111111111111111-2222222222222222-00","x":"y"}"#,
        ))
        .unwrap();
        for state in [None, Some("vendor=x"), Some(""), Some(&*"a".repeat(600))] {
            let set = set_trace_context(event.clone(), &tp, state);
            let bytes: u64 = set
                .attributes()
                .iter()
                .map(|(n, v)| (n.len() + v.text_len()) as u64)
                .sum();
            assert_eq!(
                attributes_with_trace_context(&event, &tp, state),
                (set.attributes().len(), bytes),
                "{state:?}"
            );
        }
    }

    #[test]
    fn traceparents_are_read_as_the_w3c_spec_says() {
        let t =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id, "00f067aa0ba902b7");
        assert_eq!(
            t.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        // A later version's extra fields are allowed.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }

    #[test]
    fn a_tracestate_past_its_limit_is_dropped_and_an_events_own_context_wins() {
        let event = crate::event::json::decode_event(&bytes::Bytes::from_static(
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#,
        ))
        .unwrap();
        let tp =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let long = "k=".to_string() + &"v".repeat(TRACESTATE_MAX);
        let traced = with_trace_context(event.clone(), &tp, Some(&long));
        assert_eq!(traced.get_str(TRACEPARENT), Some(tp.to_string().as_str()));
        assert_eq!(traced.get(TRACESTATE), None);
        let kept = with_trace_context(traced.clone(), &tp.child(), Some("a=b"));
        assert_eq!(kept, traced, "the event's own traceparent wins");
        assert!(
            crate::event::validate::validate(&with_trace_context(event, &tp, Some("a=b"))).is_ok()
        );
    }

    #[test]
    fn a_child_keeps_the_trace_and_gets_a_new_span() {
        let t =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let c = t.child();
        assert_eq!(
            (c.trace_id.as_str(), c.flags.as_str()),
            (t.trace_id.as_str(), "01")
        );
        assert_ne!(c.parent_id, t.parent_id);
        assert_eq!(c.parent_id.len(), 16);
        assert_ne!(t.child().parent_id, c.parent_id);
    }
}
