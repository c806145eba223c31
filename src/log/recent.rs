//! The records written last, kept decoded in memory so that the router and the lanes
//! that deliver them do not read each one back from disk and decode it again (a record
//! matched by ten subscriptions was decoded eleven times). The writer puts a group's
//! records here once they are durable, from the events the ingress already decoded;
//! readers of anything older, or of a record this ring has let go, read the log.
//!
//! Bounded per broker by record count and by encoded bytes, whichever comes first; the
//! oldest go first. Retention forgets what it deleted, so that a deleted event is gone
//! here too.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::LogRecord;

/// Records kept per broker at most.
pub const MAX_RECORDS: usize = 1024;
/// Encoded record bytes kept per broker at most.
pub const MAX_BYTES: usize = 4 << 20;

/// The recent records of every broker.
pub struct Recent {
    brokers: HashMap<Arc<str>, Mutex<Ring>>,
    max_records: usize,
    max_bytes: usize,
}

/// One broker's recent records: contiguous sequence numbers from `first`.
#[derive(Default)]
struct Ring {
    first: u64,
    records: VecDeque<(Arc<LogRecord>, usize)>,
    bytes: usize,
}

impl Ring {
    fn pop_front(&mut self) {
        if let Some((_, len)) = self.records.pop_front() {
            self.bytes -= len;
            self.first += 1;
        }
    }
}

impl Recent {
    pub fn new<'a>(
        brokers: impl Iterator<Item = &'a Arc<str>>,
        max_records: usize,
        max_bytes: usize,
    ) -> Recent {
        Recent {
            brokers: brokers.map(|b| (b.clone(), Mutex::default())).collect(),
            max_records,
            max_bytes,
        }
    }

    fn ring(&self, broker: &str) -> Option<std::sync::MutexGuard<'_, Ring>> {
        let ring = self.brokers.get(broker)?;
        Some(ring.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Adds records just made durable, each with its encoded length, in sequence order.
    /// A record that does not follow the last one kept (a write failed in between)
    /// starts the ring afresh.
    pub fn push(&self, broker: &str, records: impl IntoIterator<Item = (LogRecord, usize)>) {
        if self.max_records == 0 {
            return;
        }
        let Some(mut ring) = self.ring(broker) else {
            return;
        };
        for (record, len) in records {
            if ring.first + ring.records.len() as u64 != record.seq || ring.records.is_empty() {
                ring.records.clear();
                ring.bytes = 0;
                ring.first = record.seq;
            }
            ring.bytes += len;
            ring.records.push_back((Arc::new(record), len));
            while ring.records.len() > self.max_records
                || (ring.bytes > self.max_bytes && ring.records.len() > 1)
            {
                ring.pop_front();
            }
        }
    }

    /// The kept records from `from` on, at most `limit`; empty when `from` is not kept.
    pub fn read(&self, broker: &str, from: u64, limit: usize) -> Vec<Arc<LogRecord>> {
        let Some(ring) = self.ring(broker) else {
            return Vec::new();
        };
        let Some(skip) = from.checked_sub(ring.first) else {
            return Vec::new();
        };
        ring.records
            .iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .take(limit)
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// Lets go of every record up to `through` (retention deleted them).
    pub fn forget_through(&self, broker: &str, through: u64) {
        let Some(mut ring) = self.ring(broker) else {
            return;
        };
        while !ring.records.is_empty() && ring.first <= through {
            ring.pop_front();
        }
    }

    /// How many records `broker` keeps (for tests).
    pub fn len(&self, broker: &str) -> usize {
        self.ring(broker).map_or(0, |r| r.records.len())
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
                ("id".into(), AttrValue::String(format!("e{seq}"))),
                ("source".into(), AttrValue::UriRef("/s".into())),
                ("type".into(), AttrValue::String("t".into())),
            ],
            None,
        )
        .unwrap();
        let r = LogRecord {
            seq,
            broker: "default".into(),
            arrival_unix_nanos: 0,
            hops: 0,
            event,
        };
        (r, 100)
    }

    fn recent(max_records: usize, max_bytes: usize) -> Recent {
        let b: Arc<str> = Arc::from("default");
        Recent::new(std::iter::once(&b), max_records, max_bytes)
    }

    fn seqs(v: &[Arc<LogRecord>]) -> Vec<u64> {
        v.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn keeps_the_newest_records_within_both_bounds() {
        let r = recent(3, 1000);
        r.push("default", (1..=5).map(record));
        assert_eq!(seqs(&r.read("default", 1, 10)), Vec::<u64>::new());
        assert_eq!(seqs(&r.read("default", 3, 10)), [3, 4, 5]);
        assert_eq!(seqs(&r.read("default", 4, 1)), [4]);
        assert_eq!(seqs(&r.read("default", 6, 10)), Vec::<u64>::new());
        let r = recent(100, 250);
        r.push("default", (1..=5).map(record));
        assert_eq!(seqs(&r.read("default", 1, 10)), Vec::<u64>::new());
        assert_eq!(seqs(&r.read("default", 4, 10)), [4, 5]);
    }

    #[test]
    fn a_gap_starts_afresh_and_retention_forgets() {
        let r = recent(100, 1 << 20);
        r.push("default", (1..=3).map(record));
        r.push("default", (7..=8).map(record));
        assert_eq!(seqs(&r.read("default", 1, 10)), Vec::<u64>::new());
        assert_eq!(seqs(&r.read("default", 7, 10)), [7, 8]);
        r.forget_through("default", 7);
        assert_eq!(seqs(&r.read("default", 7, 10)), Vec::<u64>::new());
        assert_eq!(seqs(&r.read("default", 8, 10)), [8]);
        assert_eq!(r.len("unknown"), 0);
        assert!(r.read("unknown", 1, 1).is_empty());
    }
}
