//! Records just stored, decoded, for the router.
//!
//! The ingress has each event decoded when it appends it. Once a group is durable the
//! writer hands those events, with their sequence numbers, to the broker's `Fresh`, and
//! the router takes them from there instead of reading the records back from the
//! segments and decoding them again. The log stays the authority: `Fresh` holds only a
//! copy of what is stored, at most [`FRESH_BYTES`] of it (the newest), and a router
//! that finds the record it needs is not there (it is behind, or the writer has not
//! handed it over yet) reads the log as before.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::LogRecord;

/// At most this many bytes of records (as stored) are held per broker.
pub const FRESH_BYTES: usize = 8 << 20;

/// A broker's records just stored: one run of consecutive sequence numbers.
#[derive(Default)]
pub struct Fresh {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Each record with its stored size.
    records: VecDeque<(Arc<LogRecord>, usize)>,
    bytes: usize,
}

impl Fresh {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds records just stored, in sequence order, with their stored sizes. A record
    /// that does not follow the newest held starts the run again (one that was stored
    /// without its decoded event leaves a gap).
    pub fn push(&self, records: impl IntoIterator<Item = (LogRecord, usize)>) {
        let mut inner = self.inner();
        for (record, size) in records {
            if inner
                .records
                .back()
                .is_some_and(|(r, _)| r.seq + 1 != record.seq)
            {
                inner.records.clear();
                inner.bytes = 0;
            }
            inner.records.push_back((Arc::new(record), size));
            inner.bytes += size;
            while inner.bytes > FRESH_BYTES && inner.records.len() > 1 {
                if let Some((_, size)) = inner.records.pop_front() {
                    inner.bytes -= size;
                }
            }
        }
    }

    /// The records from `from` on, at most `limit`, taken out, when the one at `from`
    /// is held; empty otherwise (read the log). Records below `from` are dropped.
    pub fn take(&self, from: u64, limit: usize) -> Vec<Arc<LogRecord>> {
        let mut inner = self.inner();
        while inner.records.front().is_some_and(|(r, _)| r.seq < from) {
            if let Some((_, size)) = inner.records.pop_front() {
                inner.bytes -= size;
            }
        }
        if inner.records.front().is_none_or(|(r, _)| r.seq != from) {
            return Vec::new();
        }
        let n = limit.min(inner.records.len());
        let taken: Vec<(Arc<LogRecord>, usize)> = inner.records.drain(..n).collect();
        inner.bytes -= taken.iter().map(|(_, s)| s).sum::<usize>();
        taken.into_iter().map(|(r, _)| r).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AttrValue, Event};

    fn record(seq: u64) -> (LogRecord, usize) {
        let event = Event::new(
            vec![
                ("specversion".into(), AttrValue::String("1.0".into())),
                ("id".into(), AttrValue::String(seq.to_string())),
                ("source".into(), AttrValue::UriRef("/s".into())),
                ("type".into(), AttrValue::String("t".into())),
            ],
            None,
        )
        .unwrap();
        let r = LogRecord {
            seq,
            broker: "default".into(),
            arrival_unix_nanos: 1,
            hops: 0,
            event,
        };
        (r, 1 << 20)
    }

    fn seqs(v: &[Arc<LogRecord>]) -> Vec<u64> {
        v.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn records_are_taken_in_order_from_where_the_router_is() {
        let fresh = Fresh::default();
        fresh.push((1..=5).map(record));
        assert_eq!(seqs(&fresh.take(1, 2)), [1, 2]);
        // Below the first held: the router must read the log.
        assert!(fresh.take(0, 10).is_empty());
        // Past what the router needs: 3 is dropped.
        assert_eq!(seqs(&fresh.take(4, 10)), [4, 5]);
        assert!(fresh.take(6, 10).is_empty());
    }

    #[test]
    fn a_gap_starts_the_run_again_and_the_oldest_go_past_the_bound() {
        let fresh = Fresh::default();
        fresh.push((1..=3).map(record));
        fresh.push([record(7)]);
        assert!(fresh.take(1, 10).is_empty(), "1-3 went with the gap");
        assert_eq!(seqs(&fresh.take(7, 10)), [7]);
        // 1 MiB each, 8 MiB held: the oldest go.
        fresh.push((10..30).map(record));
        assert!(fresh.take(10, 10).is_empty());
        assert_eq!(seqs(&fresh.take(22, 100)), (22..30).collect::<Vec<_>>());
    }
}
