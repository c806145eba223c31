//! [`Store`]: the embedded store, one data directory holding
//!
//! - `segments/<broker>/`: each broker's events ([`super::events`]). A group is appended
//!   to the broker's active segment and synced, which is what makes it durable; no other
//!   file takes a write per event. The dedupe index is in memory, rebuilt at open from
//!   the segments' sidecars and frames. `segments/<broker>/kept` holds the lowest
//!   sequence retention kept.
//! - `lanes.journal`: lane entries, parked retries, the router's cursor and the
//!   subscriptions' routing states ([`super::lanes`]), written and synced with the
//!   progress every 100 ms: routing and delivery take no other write.
//! - sled's files (`db`, `conf`, `blobs/`): the dead letters ([`super::dead_letters`]).
//! - `switchyard-heads`: each broker's head, rewritten at most every second, so that a
//!   log that opens with a lower head (a segment lost its end or was deleted) reports the
//!   loss instead of passing it unseen.
//!
//! Counts that metrics and retention read often (stored events and bytes, the dead
//! letters) are kept in memory, updated after each write; the stored events and bytes
//! are counted from the segment index at open.
//!
//! Durability (`fsync`): a group is acknowledged once its segment write is synced; the
//! segment's index file is synced in the background (every 100 ms), and what a crash
//! takes of it is rebuilt from the frames at open. The dead letters are flushed before
//! the lane journal is synced, so that a lane's finish never outlives its dead letter.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::dead_letters::DeadLetters;
use super::events::dedupe_index::{self, DedupeIndex, KeyEntry};
use super::events::record;
use super::events::segments::{Location, Segments};
use super::lanes::LaneStore;
use super::{
    AppendOutcome, Damage, DeadLetter, Durability, Expired, GroupEntry, LaneEntry, LaneId,
    LogRecord, RouteProgress, StoreError, StoreOptions, Stored, SubscriptionState,
};

/// One broker's events and what is counted of them.
struct BrokerTrees {
    /// The dedupe keys inside the window; the writer holds it for a group.
    keys: Mutex<DedupeIndex>,
    /// The event bodies.
    segments: Segments,
    head: AtomicU64,
    /// The lowest sequence kept (retention deletes below it).
    first: AtomicU64,
    stored_events: AtomicU64,
    stored_bytes: AtomicU64,
    /// Held while the counts are read, written with the events, and stored back: the
    /// writer and retention both change them.
    stats_lock: Mutex<()>,
}

/// The file in a broker's segment directory that holds the lowest sequence retention
/// kept (decimal).
const KEPT_FILE: &str = "kept";

/// The embedded store (see the module documentation).
pub struct Store {
    brokers: HashMap<String, BrokerTrees>,
    durability: Durability,
    dedupe_window_nanos: u64,
    dead_letters: DeadLetters,
    /// Lane entries and routing state.
    lanes: LaneStore,
    /// The lanes paused by the admin API.
    pauses: super::pauses::Pauses,
    /// Damage found: records that do not decode (skipped when read), and records lost
    /// before the last start (the head below its mark).
    damage: Mutex<HashMap<String, Damage>>,
    /// Records already reported corrupt, so each is logged once.
    corrupt_seen: Mutex<std::collections::HashSet<(String, u64)>>,
    /// Where the head marks live, the heads last written there, and when.
    marks: Mutex<Marks>,
}

impl Drop for Store {
    fn drop(&mut self) {
        // The writer has made its last sync by now.
        self.update_marks(true);
    }
}

struct Marks {
    path: PathBuf,
    heads: HashMap<String, u64>,
    written: std::time::Instant,
}

/// The file in the data directory that holds each broker's head, rewritten at most every
/// second: if the log ever opens with a lower head (a segment lost its end or was
/// deleted), the loss is reported instead of passing unseen.
const MARKS_FILE: &str = "switchyard-heads";

fn read_marks(path: &Path) -> HashMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (b, s) = l.split_once(' ')?;
            Some((b.to_string(), s.parse().ok()?))
        })
        .collect()
}

fn write_marks(path: &Path, heads: &HashMap<String, u64>) -> std::io::Result<()> {
    let mut text = String::new();
    for (b, s) in heads {
        text.push_str(&format!("{b} {s}\n"));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

fn read_kept(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join(KEPT_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Replaces the mark in one rename; a crash that takes it only makes retention delete
/// the records it covered again.
fn write_kept(dir: &Path, first: u64) -> std::io::Result<()> {
    let tmp = dir.join(format!("{KEPT_FILE}.tmp"));
    std::fs::write(&tmp, format!("{first}\n"))?;
    std::fs::rename(tmp, dir.join(KEPT_FILE))
}

impl Store {
    /// Opens (or creates) the store in `options.path` with the events of `brokers`.
    pub fn open(options: &StoreOptions, brokers: &[String]) -> Result<Store, StoreError> {
        std::fs::create_dir_all(&options.path)?;
        let dead_letters =
            DeadLetters::open(&options.path, options.cache_capacity, options.durability)?;
        let pauses = super::pauses::Pauses::open(&options.path)?;
        let mut trees = HashMap::new();
        for b in brokers {
            let segments = Segments::open(&options.path.join("segments").join(b))?;
            let head = segments.head();
            let kept = read_kept(segments.dir()).unwrap_or(0);
            let first = kept.max(segments.first_seq().unwrap_or(head + 1));
            let count = (head + 1).saturating_sub(first);
            let bytes = segments.record_bytes(first, head);
            trees.insert(
                b.clone(),
                BrokerTrees {
                    keys: Mutex::new(DedupeIndex::new(
                        segments.dir(),
                        options.dedupe_window_nanos,
                    )),
                    segments,
                    head: AtomicU64::new(head),
                    first: AtomicU64::new(first),
                    stored_events: AtomicU64::new(count),
                    stored_bytes: AtomicU64::new(bytes),
                    stats_lock: Mutex::new(()),
                },
            );
        }
        for t in trees.values() {
            load_keys(t, options.dedupe_window_nanos)?;
        }
        let lanes = LaneStore::open(&options.path)?;
        let marks_path = options.path.join(MARKS_FILE);
        let mut damage = HashMap::new();
        for (b, mark) in read_marks(&marks_path) {
            let Some(t) = trees.get(&b) else { continue };
            let head = t.head.load(Ordering::Acquire);
            if mark > head {
                tracing::error!(
                    broker = %b,
                    first = head + 1,
                    last = mark,
                    "records were stored but are gone: the log ends before them (a segment lost its end, or was deleted); new events take these sequence numbers again"
                );
                damage.insert(
                    b,
                    Damage {
                        lost: mark - head,
                        corrupt: 0,
                    },
                );
            }
        }
        // Records missing between two segments (a segment deleted) are lost too.
        for (b, t) in &trees {
            for (first, last) in t.segments.gaps() {
                if last < t.first.load(Ordering::Acquire) {
                    continue;
                }
                tracing::error!(
                    broker = %b,
                    first,
                    last,
                    "records were stored but are gone: a segment of the log is missing; they are skipped"
                );
                damage.entry(b.clone()).or_default().lost += last - first + 1;
            }
        }
        let heads: HashMap<String, u64> = trees
            .iter()
            .map(|(b, t)| (b.clone(), t.head.load(Ordering::Acquire)))
            .collect();
        write_marks(&marks_path, &heads)?;
        Ok(Store {
            damage: Mutex::new(damage),
            corrupt_seen: Mutex::default(),
            marks: Mutex::new(Marks {
                path: marks_path,
                heads,
                written: std::time::Instant::now(),
            }),
            lanes,
            dead_letters,
            pauses,
            brokers: trees,
            durability: options.durability,
            dedupe_window_nanos: options.dedupe_window_nanos,
        })
    }

    /// A record that does not decode is skipped wherever it is read; it is logged
    /// once, with its sequence, and counted.
    fn report_corrupt(&self, broker: &str, seq: u64) {
        let new = self
            .corrupt_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((broker.to_string(), seq));
        if new {
            tracing::error!(
                broker = %broker,
                seq,
                "a stored record is corrupt (it does not decode); it is skipped"
            );
            self.damage
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(broker.to_string())
                .or_default()
                .corrupt += 1;
        }
    }

    /// Rewrites the head marks when a head moved, at most once a second unless
    /// `now`. A head moves only after its group's segment write was synced (with `fsync`
    /// durability), so every head seen here is on disk.
    fn update_marks(&self, now: bool) {
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        if !now && marks.written.elapsed() < std::time::Duration::from_secs(1) {
            return;
        }
        let heads: HashMap<String, u64> = self
            .brokers
            .iter()
            .map(|(b, t)| (b.clone(), t.head.load(Ordering::Acquire)))
            .collect();
        if heads != marks.heads {
            if let Err(e) = write_marks(&marks.path, &heads) {
                tracing::warn!(error = %e, "cannot write the head marks");
                return;
            }
            marks.heads = heads;
        }
        marks.written = std::time::Instant::now();
    }

    fn trees(&self, broker: &str) -> Result<&BrokerTrees, StoreError> {
        self.brokers
            .get(broker)
            .ok_or_else(|| StoreError::UnknownBroker(broker.to_string()))
    }

    /// Writes the entries of one broker (all of a group's entries for it); returns each
    /// entry's outcomes. The records and their index entries go to the segment files,
    /// and the records are synced; nothing else takes a write.
    /// The counts and the dedupe index are in memory, the head is published last.
    fn write_broker(
        &self,
        broker: &str,
        entries: &[&GroupEntry],
        now: u64,
    ) -> Result<Vec<Vec<AppendOutcome>>, StoreError> {
        let trees = self.trees(broker)?;
        let mut keys = trees.keys.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = trees.head.load(Ordering::Acquire);
        let first = next + 1;
        let mut bodies: Vec<(Option<&[u8]>, &[u8])> = Vec::new();
        let mut dedupe: Vec<(u64, u64)> = Vec::new();
        // Keys stored earlier in this group, so that a duplicate inside it is caught.
        let mut seen: HashMap<&[u8], u64> = HashMap::new();
        let mut all = Vec::with_capacity(entries.len());
        let (mut added, mut added_bytes) = (0u64, 0u64);
        for entry in entries {
            let mut outcomes = Vec::with_capacity(entry.appends.len());
            for append in &entry.appends {
                let key = append.dedupe_key.as_deref();
                let digest = key.map(dedupe_index::digest);
                if let (Some(key), Some(digest)) = (key, digest) {
                    let earlier = match seen.get(key) {
                        Some(&seq) => Some(seq),
                        None => self.find_duplicate(trees, &keys, key, digest, now)?,
                    };
                    if let Some(seq) = earlier {
                        outcomes.push(AppendOutcome::Duplicate(seq));
                        continue;
                    }
                }
                next += 1;
                added += 1;
                added_bytes += append.record.len() as u64;
                bodies.push((key, append.record.as_ref()));
                if let (Some(key), Some(digest)) = (key, digest) {
                    dedupe.push((next, digest));
                    seen.insert(key, next);
                }
                outcomes.push(AppendOutcome::Stored(next));
            }
            all.push(outcomes);
        }
        if added == 0 {
            return Ok(all);
        }
        // The bodies and their index entries, then the sync that makes them durable.
        let locations = trees.segments.append(first, &bodies)?;
        if self.durability == Durability::Fsync {
            if let Err(e) = trees.segments.sync() {
                // Not acknowledged: the frames go, so that these sequences are written
                // again. No reader saw them: the head has not moved.
                if let Some(l) = locations.first() {
                    if let Err(r) = trees.segments.rewind(first, *l) {
                        tracing::error!(error = %r, "cannot take back a failed write from the segment");
                    }
                }
                return Err(e.into());
            }
        }
        {
            let _counts = trees.stats_lock.lock().unwrap_or_else(|p| p.into_inner());
            trees.stored_events.fetch_add(added, Ordering::AcqRel);
            trees.stored_bytes.fetch_add(added_bytes, Ordering::AcqRel);
        }
        // The keys, in sequence order, each noted with the segment it went to.
        let mut keyed = dedupe.iter().peekable();
        for (i, l) in locations.iter().enumerate() {
            let seq = first + i as u64;
            keys.enter_segment(l.segment);
            if let Some((_, digest)) = keyed.next_if(|(s, _)| *s == seq) {
                keys.insert(KeyEntry {
                    seq,
                    digest: *digest,
                    arrival: now,
                });
            }
        }
        trees.head.store(next, Ordering::Release);
        Ok(all)
    }

    /// The sequence of a stored event with the same key, first seen inside the window.
    /// The index nominates records by the key's digest; each is read back and its key
    /// and arrival checked, newest first.
    fn find_duplicate(
        &self,
        trees: &BrokerTrees,
        keys: &DedupeIndex,
        key: &[u8],
        digest: u64,
        now: u64,
    ) -> Result<Option<u64>, StoreError> {
        let kept = trees.first.load(Ordering::Acquire);
        for seq in keys.candidates(digest) {
            // Below `kept` retention removed it: the event is not in the log any more.
            let Some(location) = trees.segments.locate(seq).filter(|_| seq >= kept) else {
                continue;
            };
            let Some((Some(stored), record)) = trees.segments.read_frame(seq, location)? else {
                continue;
            };
            if stored != key {
                continue;
            }
            let first_seen = record::decode(seq, record).map_or(0, |r| r.arrival_unix_nanos);
            // An older entry for the key was first seen earlier still.
            let fresh = now.saturating_sub(first_seen) < self.dedupe_window_nanos;
            return Ok(fresh.then_some(seq));
        }
        Ok(None)
    }
}

/// The record at `location`; `None` when its frame or its encoding is damaged.
fn read_record(
    trees: &BrokerTrees,
    seq: u64,
    location: Location,
) -> Result<Option<LogRecord>, StoreError> {
    Ok(trees
        .segments
        .read(seq, location)?
        .and_then(|bytes| record::decode(seq, bytes)))
}

/// The first sequence that arrived at or after `unix_nanos` (the head + 1 if none).
/// Arrival times grow with sequence numbers (one writer stamps them in order), so a
/// binary search over the sequence finds it.
fn seq_at_time_in(trees: &BrokerTrees, unix_nanos: u64) -> Result<u64, StoreError> {
    let head = trees.head.load(Ordering::Acquire);
    let arrival = |seq: u64| -> Result<Option<u64>, StoreError> {
        let Some(location) = trees.segments.locate(seq) else {
            return Ok(None);
        };
        Ok(read_record(trees, seq, location)?.map(|r| r.arrival_unix_nanos))
    };
    let (mut lo, mut hi) = (trees.first.load(Ordering::Acquire).max(1), head + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match arrival(mid)? {
            Some(t) if t >= unix_nanos => hi = mid,
            _ => lo = mid + 1,
        }
    }
    Ok(lo)
}

/// Fills a broker's dedupe index at open with the keys of the records that arrived
/// within a window of the newest one (no key older than that can suppress anything
/// again): from each closed segment's sidecar, or its frames when it has no good one,
/// and from the frames of the segment being written.
fn load_keys(trees: &BrokerTrees, window: u64) -> Result<(), StoreError> {
    let head = trees.head.load(Ordering::Acquire);
    if window == 0 || head == 0 {
        return Ok(());
    }
    let Some(location) = trees.segments.locate(head) else {
        return Ok(());
    };
    let Some(newest) = read_record(trees, head, location)? else {
        return Ok(());
    };
    let from = seq_at_time_in(trees, newest.arrival_unix_nanos.saturating_sub(window))?;
    let firsts = trees.segments.firsts();
    let mut keys = trees.keys.lock().unwrap_or_else(|p| p.into_inner());
    for (i, &first) in firsts.iter().enumerate() {
        let next = firsts.get(i + 1).copied();
        if next.is_some_and(|n| n <= from) {
            continue;
        }
        let read = || keyed_frames(&trees.segments, first);
        match next {
            Some(_) => keys.load_closed(first, from, read)?,
            None => keys.load_active(first, from, read()?),
        }
    }
    Ok(())
}

/// The keyed records of one segment, read from its frames.
fn keyed_frames(segments: &Segments, first: u64) -> std::io::Result<Vec<KeyEntry>> {
    Ok(segments
        .frames(first)?
        .into_iter()
        .filter_map(|(seq, key, record)| {
            let key = key?;
            Some(KeyEntry {
                seq,
                digest: dedupe_index::digest(&key),
                arrival: record::decode(seq, record).map_or(0, |r| r.arrival_unix_nanos),
            })
        })
        .collect())
}

impl Store {
    pub fn write_group(
        &self,
        group: &[GroupEntry],
        now: u64,
    ) -> Result<Vec<Vec<AppendOutcome>>, StoreError> {
        // Entries by broker, in group order; outcomes go back in the same order.
        let mut by_broker: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, entry) in group.iter().enumerate() {
            match by_broker.iter_mut().find(|(b, _)| *b == &*entry.broker) {
                Some((_, idx)) => idx.push(i),
                None => by_broker.push((&entry.broker, vec![i])),
            }
        }
        let mut outcomes = vec![Vec::new(); group.len()];
        for (broker, idx) in by_broker {
            let entries: Vec<&GroupEntry> = idx.iter().map(|&i| &group[i]).collect();
            for (i, o) in idx
                .into_iter()
                .zip(self.write_broker(broker, &entries, now)?)
            {
                outcomes[i] = o;
            }
        }
        Ok(outcomes)
    }

    pub fn read(
        &self,
        broker: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let trees = self.trees(broker)?;
        // Records are indexed before their sync; only those up to the head are stored.
        let head = trees.head.load(Ordering::Acquire);
        let from = from.max(trees.first.load(Ordering::Acquire));
        let mut locations = trees.segments.locations(from, limit);
        locations.retain(|(seq, _)| *seq <= head);
        let bodies = trees.segments.read_records(&locations)?;
        let mut out = Vec::with_capacity(locations.len());
        for ((seq, _), body) in locations.iter().zip(bodies) {
            match body.and_then(|b| record::decode(*seq, b)) {
                Some(record) => out.push(record),
                None => self.report_corrupt(broker, *seq),
            }
        }
        Ok(out)
    }

    pub fn head(&self, broker: &str) -> Result<u64, StoreError> {
        Ok(self.trees(broker)?.head.load(Ordering::Acquire))
    }

    pub fn expire_dedupe(&self, cutoff: u64, _stop: &AtomicBool) -> Result<usize, StoreError> {
        // Whole partitions go; in memory, so there is nothing to stop.
        Ok(self
            .brokers
            .values()
            .map(|t| {
                t.keys
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .expire(cutoff)
            })
            .sum())
    }

    /// The dedupe keys the broker's index holds.
    pub fn dedupe_entries(&self, broker: &str) -> usize {
        self.brokers.get(broker).map_or(0, |t| {
            t.keys.lock().unwrap_or_else(|p| p.into_inner()).len()
        })
    }

    pub fn router_cursor(&self, broker: &str) -> Result<u64, StoreError> {
        self.trees(broker)?;
        Ok(self.lanes.cursor(broker))
    }

    pub fn record_routes(
        &self,
        broker: &str,
        entries: &[(LaneId, u64)],
        progress: &RouteProgress,
    ) -> Result<(), StoreError> {
        self.trees(broker)?;
        self.lanes
            .record_routes(broker, entries, progress)
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))
    }

    /// The paused lanes of `broker`.
    pub fn paused(&self, broker: &str) -> Vec<LaneId> {
        self.pauses
            .list(broker)
            .into_iter()
            .map(|(subscription, sink)| LaneId::new(subscription, sink))
            .collect()
    }

    /// Pauses or resumes a lane, durably.
    pub fn set_paused(&self, broker: &str, lane: &LaneId, paused: bool) -> Result<(), StoreError> {
        self.pauses
            .set(broker, &lane.subscription, &lane.sink, paused)
    }

    pub fn subscription_states(
        &self,
        broker: &str,
    ) -> Result<Vec<(String, SubscriptionState)>, StoreError> {
        self.trees(broker)?;
        let mut out = Vec::new();
        for (name, json) in self.lanes.subscription_states(broker) {
            match serde_json::from_slice::<SubscriptionState>(&json) {
                Ok(state) => out.push((name, state)),
                Err(e) => {
                    tracing::warn!(subscription = %name, error = %e, "unreadable subscription state; it will be reset")
                }
            }
        }
        Ok(out)
    }

    pub fn drop_lanes(
        &self,
        broker: &str,
        subscription: &str,
        sinks: Option<&[String]>,
    ) -> Result<usize, StoreError> {
        self.trees(broker)?;
        Ok(self.lanes.drop_lanes(broker, subscription, sinks))
    }

    pub fn lane_entries(
        &self,
        broker: &str,
        lane: &LaneId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<LaneEntry>, StoreError> {
        self.trees(broker)?;
        Ok(self.lanes.entries(broker, lane, from, limit))
    }

    pub fn finish(
        &self,
        broker: &str,
        lane: &LaneId,
        entries: &[LaneEntry],
    ) -> Result<(), StoreError> {
        self.trees(broker)?;
        self.lanes.finish(broker, lane, entries);
        Ok(())
    }

    pub fn park(
        &self,
        broker: &str,
        lane: &LaneId,
        seq: u64,
        due: u64,
        attempts: u32,
    ) -> Result<(), StoreError> {
        self.trees(broker)?;
        self.lanes.park(broker, lane, seq, due, attempts);
        Ok(())
    }

    pub fn unpark_due(
        &self,
        broker: &str,
        lane: &LaneId,
        now: u64,
    ) -> Result<(usize, Option<u64>), StoreError> {
        self.trees(broker)?;
        Ok(self.lanes.unpark_due(broker, lane, now))
    }

    pub fn parked(&self, broker: &str, lane: &LaneId) -> Result<usize, StoreError> {
        self.trees(broker)?;
        Ok(self.lanes.counts(broker, lane).1 as usize)
    }

    pub fn next_parked(&self, broker: &str, lane: &LaneId) -> Result<Option<u64>, StoreError> {
        self.trees(broker)?;
        Ok(self.lanes.next_parked(broker, lane))
    }

    pub fn store_dead_letter(&self, letter: &DeadLetter) -> Result<u64, StoreError> {
        self.dead_letters.store(letter)
    }

    pub fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        self.dead_letters.get(id)
    }

    pub fn delete_dead_letter(&self, id: u64) -> Result<bool, StoreError> {
        self.dead_letters.delete(id)
    }

    pub fn expire_dead_letters(&self, max_count: u64, cutoff: u64) -> Result<usize, StoreError> {
        self.dead_letters.expire(max_count, cutoff)
    }

    pub fn expire_events(
        &self,
        broker: &str,
        cutoff: u64,
        free_bytes: u64,
        limit: usize,
    ) -> Result<Expired, StoreError> {
        let trees = self.trees(broker)?;
        let head = trees.head.load(Ordering::Acquire);
        let mut first_kept = trees.first.load(Ordering::Acquire);
        let mut expired = Expired::default();
        for (seq, location) in trees.segments.locations(first_kept, limit) {
            if seq > head {
                break;
            }
            // A record that cannot be read is old by position: it goes with its neighbours.
            let arrival = read_record(trees, seq, location)?.map_or(0, |r| r.arrival_unix_nanos);
            if arrival < cutoff {
                expired.by_age += 1;
            } else if expired.bytes < free_bytes {
                expired.by_size += 1;
            } else {
                break;
            }
            expired.bytes += u64::from(location.record_len);
            first_kept = seq + 1;
        }
        let n = (expired.by_age + expired.by_size) as u64;
        if n == 0 {
            return Ok(expired);
        }
        let _counts = trees.stats_lock.lock().unwrap_or_else(|p| p.into_inner());
        let count = trees
            .stored_events
            .load(Ordering::Acquire)
            .saturating_sub(n);
        let bytes = trees
            .stored_bytes
            .load(Ordering::Acquire)
            .saturating_sub(expired.bytes);
        write_kept(trees.segments.dir(), first_kept)?;
        trees.first.store(first_kept, Ordering::Release);
        trees.stored_events.store(count, Ordering::Release);
        trees.stored_bytes.store(bytes, Ordering::Release);
        drop(_counts);
        // Whole segments before the first record kept go (the newest one always stays).
        trees.segments.remove_before(first_kept)?;
        Ok(expired)
    }

    pub fn stored(&self, broker: &str) -> Result<Stored, StoreError> {
        let trees = self.trees(broker)?;
        Ok(Stored {
            events: trees.stored_events.load(Ordering::Acquire),
            bytes: trees.stored_bytes.load(Ordering::Acquire),
        })
    }

    pub fn oldest_arrival(&self, broker: &str) -> Result<Option<u64>, StoreError> {
        let trees = self.trees(broker)?;
        let first = trees.first.load(Ordering::Acquire);
        if first > trees.head.load(Ordering::Acquire) {
            return Ok(None);
        }
        let Some(location) = trees.segments.locate(first) else {
            return Ok(Some(0));
        };
        Ok(Some(
            read_record(trees, first, location)?.map_or(0, |r| r.arrival_unix_nanos),
        ))
    }

    pub fn disk_bytes(&self) -> Result<u64, StoreError> {
        let segments: u64 = self.brokers.values().map(|t| t.segments.disk_bytes()).sum();
        Ok(self.dead_letters.disk_bytes()? + segments + self.lanes.disk_bytes())
    }

    pub fn lane_depth(&self, broker: &str, lane: &LaneId) -> Result<u64, StoreError> {
        self.trees(broker)?;
        let (pending, parked) = self.lanes.counts(broker, lane);
        Ok(pending + parked)
    }

    pub fn dead_letter_count(&self) -> Result<usize, StoreError> {
        Ok(self.dead_letters.count() as usize)
    }

    pub fn dead_letters(&self) -> Result<Vec<(u64, DeadLetter)>, StoreError> {
        self.dead_letters.list()
    }

    pub fn seq_at_time(&self, broker: &str, unix_nanos: u64) -> Result<u64, StoreError> {
        seq_at_time_in(self.trees(broker)?, unix_nanos)
    }

    pub fn sync_progress(&self) -> Result<(), StoreError> {
        // The segments' index files every time (only appends make them dirty); the dead
        // letters when they changed, then the lane journal when it changed, so that a
        // lane's finish never outlives its dead letter.
        for t in self.brokers.values() {
            if self.durability == Durability::Relaxed {
                t.segments.sync()?;
            }
            t.segments.sync_index()?;
        }
        self.lanes
            .sync_after(|| self.dead_letters.flush_if_dirty())?;
        self.update_marks(false);
        Ok(())
    }

    pub fn damage(&self, broker: &str) -> Damage {
        self.damage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(broker)
            .copied()
            .unwrap_or_default()
    }

    pub fn sync(&self) -> Result<(), StoreError> {
        for t in self.brokers.values() {
            t.segments.sync()?;
            t.segments.sync_index()?;
        }
        self.lanes.sync_after(|| self.dead_letters.flush())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::event::{AttrValue, Event};
    use crate::store::Append;

    const T0: u64 = 1_767_225_600_000_000_000;

    fn append(log: &Store, key: &str) -> AppendOutcome {
        let event = Event::new(
            vec![
                ("specversion".into(), AttrValue::String("1.0".into())),
                ("id".into(), AttrValue::String(key.into())),
                ("source".into(), AttrValue::UriRef("/s".into())),
                ("type".into(), AttrValue::String("t".into())),
            ],
            None,
        )
        .unwrap();
        let group = [GroupEntry {
            broker: Arc::from("default"),
            appends: vec![Append {
                record: Bytes::from(record::encode("default", T0, 0, &event)),
                dedupe_key: Some(key.as_bytes().to_vec()),
                decoded: None,
            }],
        }];
        log.write_group(&group, T0).unwrap().remove(0).remove(0)
    }

    #[test]
    fn a_digest_that_names_a_record_of_another_key_makes_no_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            path: dir.path().to_path_buf(),
            durability: Durability::Fsync,
            cache_capacity: 8 << 20,
            dedupe_window_nanos: 60_000_000_000,
        };
        let log = Store::open(&options, &["default".to_string()]).unwrap();
        assert_eq!(append(&log, "a"), AppendOutcome::Stored(1));
        // As if "b" shared "a"'s digest: its entry names the record that holds "a".
        log.brokers["default"]
            .keys
            .lock()
            .unwrap()
            .insert(KeyEntry {
                seq: 1,
                digest: dedupe_index::digest(b"b"),
                arrival: T0,
            });
        // The frame is read back and its key compared: "b" is not a duplicate of "a".
        assert_eq!(append(&log, "b"), AppendOutcome::Stored(2));
        assert_eq!(append(&log, "b"), AppendOutcome::Duplicate(2));
        assert_eq!(append(&log, "a"), AppendOutcome::Duplicate(1));
    }
}
