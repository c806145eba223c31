//! Lane feeds: the router hands each running lane the entries it has just recorded,
//! with the event already read and decoded, so that a lane keeping up takes its work
//! from memory instead of scanning its lane in the lane store and reading every record back.
//!
//! The lane store stays the durable copy and the authority. A feed is either **on**, and
//! then holds every entry the router recorded for the lane from `since` on that the
//! lane has not taken yet, or **off**, and the lane reads the store. The router never waits
//! for a lane: an entry that does not fit (the lane is behind) turns the feed off and
//! empties it. A lane whose scan of the store has caught up turns it on again, which holds
//! only if every entry dropped while it was off lies below where the scan ended; a scan
//! that raced with the router just tries again. Entries that go back into a lane below
//! where its lane has read (a replay, a redelivery, a backfill, a parked retry that is
//! due) are announced on the broker's `routed` signal ([`super::Routing::routed`]); the
//! lane then reads the store from its start.
//!
//! Each push wakes the feed's lane and no other, whether the entry was queued or
//! dropped (a lane reading the store needs the wake-up as much).
//!
//! Lanes off their feeds read each event back from the log. The events they read are
//! kept a while ([`Feeds::recent`], [`RECENT_BYTES`]): lanes that fell behind together
//! (a burst, a slow sink) read the same stretch of the log at about the same pace, and
//! each event is then read and decoded once, not once per lane it went to.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::event::Data;
use crate::log::{LaneId, LogRecord};

/// At most this many entries wait in one feed.
pub const MAX_ENTRIES: usize = 512;

/// At most this many bytes of events (estimated, a shared event counted once per feed)
/// wait in one feed.
pub const MAX_BYTES: usize = 1 << 20;

/// At most this many bytes of events (estimated) are kept for lanes reading the log
/// ([`Feeds::recent`]).
pub const RECENT_BYTES: usize = 8 << 20;

/// The feeds of one broker's running lanes.
#[derive(Default)]
pub struct Feeds {
    lanes: Mutex<HashMap<LaneId, Arc<Feed>>>,
    recent: Mutex<Recent>,
}

/// Events lately read back from the log by lanes that are off their feeds. Lanes behind
/// their feeds move at about the same pace through the same stretch of the log, so the
/// other lanes an event was routed to find it here: one read and one decode per event
/// instead of one per lane. The oldest go first.
#[derive(Default)]
struct Recent {
    records: HashMap<u64, Arc<LogRecord>>,
    /// In the order they came, with their estimated sizes.
    order: VecDeque<(u64, usize)>,
    bytes: usize,
}

impl Feeds {
    fn lanes(&self) -> MutexGuard<'_, HashMap<LaneId, Arc<Feed>>> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new feed for a lane that starts running, off; it replaces the feed of an
    /// earlier run of the lane, whose taken entries the new run knows nothing of.
    pub fn attach(&self, lane: &LaneId) -> Arc<Feed> {
        let feed = Arc::new(Feed::default());
        self.lanes().insert(lane.clone(), feed.clone());
        feed
    }

    /// Removes `feed` when its lane stops (unless a newer run has replaced it).
    pub fn detach(&self, lane: &LaneId, feed: &Arc<Feed>) {
        let mut lanes = self.lanes();
        if lanes.get(lane).is_some_and(|f| Arc::ptr_eq(f, feed)) {
            lanes.remove(lane);
        }
    }

    /// The event at `seq` if a lane read it back lately.
    pub fn recent(&self, seq: u64) -> Option<Arc<LogRecord>> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.records.get(&seq).cloned()
    }

    /// Keeps an event a lane read back, for the other lanes it went to.
    pub fn remember(&self, record: &Arc<LogRecord>) {
        let size = approx_bytes(record);
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.records.insert(record.seq, record.clone()).is_some() {
            return;
        }
        recent.order.push_back((record.seq, size));
        recent.bytes += size;
        while recent.bytes > RECENT_BYTES {
            let Some((seq, size)) = recent.order.pop_front() else {
                break;
            };
            recent.records.remove(&seq);
            recent.bytes -= size;
        }
    }

    /// Hands the router's recorded entries to their lanes' feeds. Call only after the
    /// entries are stored, in the order the router recorded them (ascending per lane);
    /// `records` holds the event of every entry, sorted by sequence.
    pub fn push(&self, entries: &[(LaneId, u64)], records: &[Arc<LogRecord>]) {
        if entries.is_empty() {
            return;
        }
        let sizes: Vec<usize> = records.iter().map(|r| approx_bytes(r)).collect();
        let lanes = self.lanes();
        for (lane, seq) in entries {
            let Some(feed) = lanes.get(lane) else {
                continue;
            };
            match records.binary_search_by_key(seq, |r| r.seq) {
                Ok(i) => feed.push(&records[i], sizes[i]),
                // Not expected (the router decided from these records); never guess.
                Err(_) => feed.drop_entry(*seq),
            }
        }
    }
}

/// One lane's feed.
#[derive(Default)]
pub struct Feed {
    inner: Mutex<Inner>,
    wake: Notify,
}

#[derive(Default)]
struct Inner {
    /// `Some(since)` when on: every entry recorded from `since` on that the lane has not
    /// taken is in `queue`.
    since: Option<u64>,
    /// Each event with its estimated size.
    queue: VecDeque<(Arc<LogRecord>, usize)>,
    bytes: usize,
    /// One past the highest sequence dropped since the feed was last turned on (0: none).
    dropped_below: u64,
}

impl Inner {
    fn off(&mut self) {
        self.since = None;
        self.queue.clear();
        self.bytes = 0;
    }
}

/// A rough size of a record held in memory.
fn approx_bytes(record: &LogRecord) -> usize {
    let data = match record.event.data() {
        Some(Data::Binary(b) | Data::Json(b)) => b.len(),
        Some(Data::Text(s)) => s.len(),
        Some(Data::Proto { type_url, value }) => type_url.len() + value.len(),
        None => 0,
    };
    let attributes: usize = record
        .event
        .attributes()
        .iter()
        .map(|(n, v)| n.len() + v.as_str().map_or(8, str::len) + 32)
        .sum();
    data + attributes + 64
}

impl Feed {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, record: &Arc<LogRecord>, size: usize) {
        self.push_locked(record, size);
        self.wake.notify_one();
    }

    fn push_locked(&self, record: &Arc<LogRecord>, size: usize) {
        let mut inner = self.inner();
        if inner.since.is_some()
            && inner.queue.len() < MAX_ENTRIES
            && inner.bytes + size <= MAX_BYTES
        {
            inner.queue.push_back((record.clone(), size));
            inner.bytes += size;
        } else {
            inner.off();
            inner.dropped_below = inner.dropped_below.max(record.seq + 1);
        }
    }

    fn drop_entry(&self, seq: u64) {
        {
            let mut inner = self.inner();
            inner.off();
            inner.dropped_below = inner.dropped_below.max(seq + 1);
        }
        self.wake.notify_one();
    }

    /// Resolves once something was pushed since the last time it resolved (or, the
    /// first time, since the feed was made).
    pub async fn pushed(&self) {
        self.wake.notified().await
    }

    /// Up to `limit` entries at or after `from`, in order, taken out of the feed
    /// (entries below `from` are discarded: the lane has them). `None` when the feed is
    /// off: the lane must read the store from `from`.
    pub fn take(&self, from: u64, limit: usize) -> Option<Vec<Arc<LogRecord>>> {
        let mut inner = self.inner();
        if inner.since.is_none_or(|since| since > from) {
            return None;
        }
        let mut out = Vec::new();
        while out.len() < limit {
            let Some((record, size)) = inner.queue.pop_front() else {
                break;
            };
            inner.bytes = inner.bytes.saturating_sub(size);
            if record.seq >= from {
                out.push(record);
            }
        }
        Some(out)
    }

    /// Turns the feed on from `from`, after a scan of the store that started while the feed
    /// was off found every entry at or after where it began and nothing from `from` on.
    /// Fails (and the lane scans again) when the router dropped an entry at or after
    /// `from` meanwhile, one that scan may not have seen.
    pub fn turn_on(&self, from: u64) -> bool {
        let mut inner = self.inner();
        if inner.since.is_some() {
            return true;
        }
        if inner.dropped_below > from {
            return false;
        }
        inner.off();
        inner.since = Some(from);
        inner.dropped_below = 0;
        true
    }

    /// Turns the feed off (the lane goes back to reading the store).
    pub fn turn_off(&self) {
        let mut inner = self.inner();
        inner.off();
        inner.dropped_below = 0;
    }

    /// Whether the feed is on (for tests).
    pub fn is_on(&self) -> bool {
        self.inner().since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AttrValue, Event};

    fn record(seq: u64, data: usize) -> Arc<LogRecord> {
        let attributes = vec![
            ("specversion".into(), AttrValue::String("1.0".into())),
            ("id".into(), AttrValue::String(format!("e{seq}"))),
            ("source".into(), AttrValue::UriRef("/t".into())),
            ("type".into(), AttrValue::String("t".into())),
        ];
        let event = Event::new(attributes, Some(Data::Binary(vec![b'x'; data].into()))).unwrap();
        Arc::new(LogRecord {
            seq,
            broker: "default".into(),
            arrival_unix_nanos: 0,
            hops: 0,
            event,
        })
    }

    fn lane() -> LaneId {
        LaneId::new("s", "http://sink")
    }

    fn seqs(r: Option<Vec<Arc<LogRecord>>>) -> Option<Vec<u64>> {
        r.map(|v| v.iter().map(|r| r.seq).collect())
    }

    #[test]
    fn a_feed_starts_off_and_drops_what_it_is_handed() {
        let feeds = Feeds::default();
        let feed = feeds.attach(&lane());
        feeds.push(&[(lane(), 1)], &[record(1, 10)]);
        assert_eq!(seqs(feed.take(0, 10)), None, "off: read the store");
        // A scan that found nothing at all (it ran before the entry was stored) is not
        // enough either.
        assert!(!feed.turn_on(0));
        // The dropped entry 1 may not have been seen by a scan that ended before it.
        assert!(!feed.turn_on(1));
        assert!(feed.turn_on(2));
        feeds.push(&[(lane(), 2), (lane(), 3)], &[record(2, 10), record(3, 10)]);
        assert_eq!(seqs(feed.take(2, 10)), Some(vec![2, 3]));
        assert_eq!(seqs(feed.take(4, 10)), Some(vec![]));
    }

    #[test]
    fn take_discards_what_the_lane_already_has_and_keeps_the_rest() {
        let feeds = Feeds::default();
        let feed = feeds.attach(&lane());
        assert!(feed.turn_on(1));
        let records: Vec<_> = (1..=5).map(|s| record(s, 10)).collect();
        let entries: Vec<_> = (1..=5).map(|s| (lane(), s)).collect();
        feeds.push(&entries, &records);
        // A scan of the store took 1 and 2 meanwhile.
        assert_eq!(seqs(feed.take(3, 2)), Some(vec![3, 4]));
        assert_eq!(seqs(feed.take(5, 2)), Some(vec![5]));
        // A feed that is on from 1 serves no lane that has read less.
        let other = Feed::default();
        assert!(other.turn_on(7));
        assert_eq!(seqs(other.take(6, 1)), None);
    }

    #[test]
    fn a_full_feed_turns_off_and_empties() {
        let feeds = Feeds::default();
        let feed = feeds.attach(&lane());
        assert!(feed.turn_on(1));
        let n = MAX_ENTRIES as u64 + 1;
        let records: Vec<_> = (1..=n).map(|s| record(s, 10)).collect();
        let entries: Vec<_> = (1..=n).map(|s| (lane(), s)).collect();
        feeds.push(&entries, &records);
        assert!(!feed.is_on());
        assert_eq!(seqs(feed.take(1, 10)), None);
        // A scan that ended before the last entry dropped cannot turn it on.
        assert!(!feed.turn_on(n));
        assert!(feed.turn_on(n + 1));
        // Bytes count too: 1 MiB of events fills it.
        let big: Vec<_> = (n + 1..n + 4).map(|s| record(s, 400 << 10)).collect();
        let entries: Vec<_> = (n + 1..n + 4).map(|s| (lane(), s)).collect();
        feeds.push(&entries, &big);
        assert!(!feed.is_on());
    }

    #[test]
    fn events_read_back_are_shared_until_newer_ones_fill_the_bound() {
        let feeds = Feeds::default();
        let first = record(1, 10);
        feeds.remember(&first);
        let again = feeds.recent(1).expect("kept");
        assert!(Arc::ptr_eq(&first, &again), "the same event, not a copy");
        assert!(feeds.recent(2).is_none());
        // Newer events past the bound push the oldest out, and only as many as needed.
        let size = 64 << 10;
        let n = (RECENT_BYTES / size) as u64 + 1;
        for seq in 2..=n + 1 {
            feeds.remember(&record(seq, size));
        }
        assert!(feeds.recent(1).is_none(), "the oldest went first");
        assert!(feeds.recent(n + 1).is_some(), "the newest stays");
        let kept = (1..=n + 1).filter(|s| feeds.recent(*s).is_some()).count();
        assert!(
            kept as u64 >= n - 2 && kept * size <= RECENT_BYTES,
            "{kept} events of {size} bytes kept"
        );
    }

    #[tokio::test]
    async fn a_push_wakes_the_lane_even_when_its_feed_is_off() {
        let feeds = Feeds::default();
        let feed = feeds.attach(&lane());
        let other = feeds.attach(&LaneId::new("t", "http://sink"));
        feeds.push(&[(lane(), 1)], &[record(1, 1)]);
        tokio::time::timeout(std::time::Duration::from_secs(5), feed.pushed())
            .await
            .expect("woken");
        let idle = tokio::time::timeout(std::time::Duration::from_millis(50), other.pushed());
        assert!(idle.await.is_err(), "a lane that got nothing is not woken");
    }

    #[test]
    fn only_attached_lanes_are_fed_and_a_new_run_starts_afresh() {
        let feeds = Feeds::default();
        let old = feeds.attach(&lane());
        assert!(old.turn_on(1));
        let new = feeds.attach(&lane());
        feeds.detach(&lane(), &old);
        feeds.push(&[(lane(), 1)], &[record(1, 1)]);
        assert!(
            !new.is_on(),
            "the new run's feed is off until its scan catches up"
        );
        assert_eq!(
            seqs(old.take(1, 1)),
            Some(vec![]),
            "the old run's feed gets nothing"
        );
        feeds.detach(&lane(), &new);
        assert!(feeds.lanes().is_empty());
    }
}
