//! The lane store: every lane's pending and parked entries, the router's cursor and the
//! subscriptions' routing states, held in memory and kept durable by an append-only
//! journal (`lanes.journal` in the data directory).
//!
//! Every change is one op (`ops.rs`): applied to the state and appended to a buffer under the
//! same lock, so the journal holds the changes in the order they were made. `sync`
//! writes the buffer to the file and syncs it (the log's writer calls it every 100 ms).
//! A crash keeps a prefix of the journal: routing progress is
//! written after the entries it completes, so it is never kept without them. At open
//! the journal is read up to its first torn or damaged record (a crash's unfinished
//! tail), which is cut.
//!
//! A pending entry is a sequence number with a value: attempts made (from a parked
//! retry) and a stamp, so that finishing an entry does not remove a newer copy put back
//! meanwhile (a replay, a redelivery). Entries the router made (no attempts, stamp 0)
//! are kept as runs of consecutive numbers: a lane that matches every event, however
//! far behind, holds one run. The others, and the parked entries, are kept one by one.
//!
//! When the journal has grown to four times the last snapshot (and at least
//! [`COMPACT_MIN`]), `sync` writes a snapshot of the state to a new file, syncs it and
//! renames it over the journal.

mod intervals;
mod ops;
mod state;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ops::Op;
use state::State;

use crate::store::{LaneEntry, LaneId, RouteProgress};

/// The journal's file name, in the data directory.
pub const JOURNAL_FILE: &str = "lanes.journal";

pub const MAGIC: &[u8; 8] = b"SYLANES1";

/// The journal is not rewritten while it is smaller than this.
pub const COMPACT_MIN: u64 = 16 << 20;

/// A record's payload is at most this long: a larger length is damage.
const MAX_RECORD: usize = 64 << 20;

/// The journal file and what has been written to it.
struct Journal {
    dir: PathBuf,
    file: File,
    len: u64,
    /// The journal is rewritten once it is this long.
    compact_at: u64,
    compact_min: u64,
    /// A snapshot failed to be written: the next sync writes one.
    must_snapshot: bool,
}

/// What a journal held when it was read: the state, and where its good part ends.
struct Loaded {
    state: State,
    good: u64,
    total: u64,
}

fn load(bytes: &[u8]) -> Option<Loaded> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return None;
    }
    let mut state = State::default();
    let mut at = MAGIC.len();
    while let Some(header) = bytes.get(at..at + 8) {
        let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
        if len > MAX_RECORD {
            break;
        }
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Some(op) = Op::decode(payload) else {
            break;
        };
        state.apply(&op);
        at += 8 + len;
    }
    Some(Loaded {
        state,
        good: at as u64,
        total: bytes.len() as u64,
    })
}

/// An error opening the lane store.
#[derive(Debug, thiserror::Error)]
pub enum LanesError {
    #[error("{path}: not a lane journal (its header is missing or damaged); move it away to start with no pending deliveries, or restore it")]
    NotAJournal { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The lane store (see the module documentation).
pub struct LaneStore {
    state: Mutex<State>,
    journal: Mutex<Journal>,
    path: PathBuf,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LanesError + '_ {
    move |source| LanesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` as the journal in `dir`: a new file, synced, renamed over the old one.
fn replace_journal(dir: &Path, bytes: &[u8]) -> std::io::Result<File> {
    let tmp = dir.join(format!("{JOURNAL_FILE}.new"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(JOURNAL_FILE))?;
    File::open(dir)?.sync_all()?;
    OpenOptions::new().append(true).open(dir.join(JOURNAL_FILE))
}

impl LaneStore {
    /// Opens the journal in `dir`, or creates an empty one.
    pub fn open(dir: &Path) -> Result<LaneStore, LanesError> {
        Self::open_compacting_at(dir, COMPACT_MIN)
    }

    /// [`LaneStore::open`], rewriting the journal once it is `compact_min` bytes or
    /// more (and four times the last snapshot).
    fn open_compacting_at(dir: &Path, compact_min: u64) -> Result<LaneStore, LanesError> {
        let path = dir.join(JOURNAL_FILE);
        let _ = std::fs::remove_file(dir.join(format!("{JOURNAL_FILE}.new")));
        let state = if path.exists() {
            let mut bytes = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(io_error(&path))?;
            let loaded =
                load(&bytes).ok_or_else(|| LanesError::NotAJournal { path: path.clone() })?;
            if loaded.good < loaded.total {
                tracing::warn!(
                    journal = %path.display(),
                    cut = loaded.total - loaded.good,
                    "the lane journal ends in a torn or damaged record (a crash while it was written); the bytes from there are cut, and the deliveries they recorded are made again"
                );
            }
            loaded.state
        } else {
            State::default()
        };
        // Start from a snapshot: a compact journal without a torn tail.
        let mut state = state;
        state.buf.clear();
        let snapshot = state.snapshot();
        let file = replace_journal(dir, &snapshot).map_err(io_error(&path))?;
        let len = snapshot.len() as u64;
        Ok(LaneStore {
            state: Mutex::new(state),
            journal: Mutex::new(Journal {
                dir: dir.to_path_buf(),
                file,
                len,
                compact_at: (len * 4).max(compact_min),
                compact_min,
                must_snapshot: false,
            }),
            path,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes what changed since the last call to the journal and syncs it, or rewrites
    /// the journal from a snapshot when it has grown large.
    #[cfg(test)]
    pub fn sync(&self) -> std::io::Result<()> {
        self.sync_after(|| Ok(()))
    }

    /// `sync`, running `first` between taking the changes and writing
    /// them: whatever another store holds that was written before any of these changes
    /// is made durable by `first` before they are. (The dead letters' flush goes there:
    /// a lane's finish must never outlive the dead letter stored before it.)
    pub fn sync_after<E: From<std::io::Error>>(
        &self,
        first: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        let (bytes, snapshot) = {
            let mut state = self.state();
            if journal.must_snapshot || journal.len + state.buf.len() as u64 >= journal.compact_at {
                state.buf.clear();
                (state.snapshot(), true)
            } else if state.buf.is_empty() {
                drop(state);
                return first();
            } else {
                (std::mem::take(&mut state.buf), false)
            }
        };
        let written = first().and_then(|()| {
            if snapshot {
                let file = replace_journal(&journal.dir, &bytes)?;
                journal.file = file;
                journal.len = bytes.len() as u64;
                journal.compact_at = (journal.len * 4).max(journal.compact_min);
            } else {
                let len = journal.len;
                let appended = journal
                    .file
                    .write_all(&bytes)
                    .and_then(|()| journal.file.sync_data());
                if let Err(e) = appended {
                    // Nothing of a failed write may stay: what follows would come after a hole.
                    let _ = journal.file.set_len(len);
                    return Err(e.into());
                }
                journal.len += bytes.len() as u64;
            }
            Ok(())
        });
        match written {
            Ok(()) => {
                journal.must_snapshot = false;
                Ok(())
            }
            Err(e) => {
                if snapshot {
                    // The state holds every change: the next try writes it whole.
                    journal.must_snapshot = true;
                } else {
                    // Kept for the next try, before whatever was recorded since.
                    let mut state = self.state();
                    let newer = std::mem::take(&mut state.buf);
                    state.buf = bytes;
                    state.buf.extend_from_slice(&newer);
                }
                Err(e)
            }
        }
    }

    /// Bytes the journal takes on disk.
    pub fn disk_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    pub fn cursor(&self, broker: &str) -> u64 {
        let state = self.state();
        state
            .broker_id(broker)
            .map_or(0, |b| state.brokers[b as usize].cursor)
    }

    /// Records routing entries, then their progress (after them in the journal).
    pub fn record_routes(
        &self,
        broker: &str,
        entries: &[(LaneId, u64)],
        progress: &RouteProgress,
    ) -> Result<(), serde_json::Error> {
        let progress_json = match progress {
            RouteProgress::Subscription(_, state) => Some(serde_json::to_vec(state)?),
            _ => None,
        };
        let mut state = self.state();
        // Entries put back by hand (replay, redelivery) carry a fresh stamp, so that a
        // deliverer finishing an older copy of the same sequence does not remove them.
        let stamp = match progress {
            RouteProgress::None => state.stamp(),
            _ => 0,
        };
        if !entries.is_empty() {
            let mut ids: Vec<(u32, u64)> = Vec::with_capacity(entries.len());
            let mut last: Option<(&LaneId, u32)> = None;
            for (lane, seq) in entries {
                let id = match last {
                    Some((l, id)) if l == lane => id,
                    _ => state.lane_id_or_new(broker, lane.key_prefix()),
                };
                last = Some((lane, id));
                ids.push((id, *seq));
            }
            state.record(Op::Put {
                attempts: 0,
                stamp,
                entries: ids,
            });
        }
        match progress {
            RouteProgress::Cursor(c) => {
                let b = state.broker_id_or_new(broker);
                state.record(Op::Cursor { broker: b, seq: *c });
            }
            RouteProgress::Subscription(name, _) => {
                let b = state.broker_id_or_new(broker);
                state.record(Op::Subscription {
                    broker: b,
                    name: name.clone(),
                    state: progress_json.unwrap_or_default(),
                });
            }
            RouteProgress::None => {}
        }
        Ok(())
    }

    /// Every subscription state of the broker (JSON), by name.
    pub fn subscription_states(&self, broker: &str) -> Vec<(String, Vec<u8>)> {
        let state = self.state();
        let Some(b) = state.broker_id(broker) else {
            return Vec::new();
        };
        state.brokers[b as usize]
            .subscriptions
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect()
    }

    /// Drops the lanes of `subscription` (those of `sinks`, or all of them and its
    /// state); returns how many entries went.
    pub fn drop_lanes(&self, broker: &str, subscription: &str, sinks: Option<&[String]>) -> usize {
        let mut state = self.state();
        let Some(b) = state.broker_id(broker) else {
            return 0;
        };
        let mut whole = subscription.as_bytes().to_vec();
        whole.push(0);
        let prefixes: Vec<Vec<u8>> = match sinks {
            Some(sinks) => sinks
                .iter()
                .map(|s| LaneId::new(subscription, s.as_str()).key_prefix())
                .collect(),
            None => vec![whole],
        };
        let ids: Vec<u32> = state
            .lane_ids
            .get(&b)
            .into_iter()
            .flatten()
            .filter(|(p, _)| prefixes.iter().any(|x| p.starts_with(x)))
            .map(|(_, &id)| id)
            .collect();
        let mut dropped = 0;
        for id in ids {
            let lane = &state.lanes[id as usize];
            let n = lane.pending() as usize + lane.parked.len();
            if n > 0 {
                dropped += n;
                state.record(Op::Drop { lane: id });
            }
        }
        if sinks.is_none()
            && state.brokers[b as usize]
                .subscriptions
                .contains_key(subscription)
        {
            state.record(Op::Unsubscribe {
                broker: b,
                name: subscription.to_string(),
            });
        }
        dropped
    }

    pub fn entries(&self, broker: &str, lane: &LaneId, from: u64, limit: usize) -> Vec<LaneEntry> {
        let state = self.state();
        state
            .lane(broker, lane)
            .map_or_else(Vec::new, |l| l.entries(from, limit))
    }

    /// Removes finished entries that still carry the stamp they were taken with.
    pub fn finish(&self, broker: &str, lane: &LaneId, entries: &[LaneEntry]) {
        let mut state = self.state();
        let Some(id) = state.lane_id(broker, &lane.key_prefix()) else {
            return;
        };
        let l = &state.lanes[id as usize];
        let seqs: Vec<u64> = entries
            .iter()
            .filter(|e| l.value(e.seq).is_some_and(|(_, stamp)| stamp == e.stamp))
            .map(|e| e.seq)
            .collect();
        if !seqs.is_empty() {
            state.record(Op::Remove { lane: id, seqs });
        }
    }

    pub fn park(&self, broker: &str, lane: &LaneId, seq: u64, due: u64, attempts: u32) {
        let mut state = self.state();
        let id = state.lane_id_or_new(broker, lane.key_prefix());
        state.record(Op::Park {
            lane: id,
            seq,
            due,
            attempts,
        });
    }

    /// Moves the parked entries due by `now` back to pending; how many, and when the
    /// next one is due.
    pub fn unpark_due(&self, broker: &str, lane: &LaneId, now: u64) -> (usize, Option<u64>) {
        let mut state = self.state();
        let Some(id) = state.lane_id(broker, &lane.key_prefix()) else {
            return (0, None);
        };
        let l = &state.lanes[id as usize];
        let due: Vec<(u64, u64, u32)> = l
            .parked
            .range(..=(now, u64::MAX))
            .map(|(&(d, s), &a)| (d, s, a))
            .collect();
        let next = l
            .parked
            .range((Bound::Excluded((now, u64::MAX)), Bound::Unbounded))
            .next()
            .map(|(&(d, _), _)| d);
        let n = due.len();
        if n > 0 {
            let stamp = state.stamp();
            state.record(Op::Unpark {
                lane: id,
                stamp,
                entries: due,
            });
        }
        (n, next)
    }

    /// Pending and parked entries of the lane.
    pub fn counts(&self, broker: &str, lane: &LaneId) -> (u64, u64) {
        let state = self.state();
        state
            .lane(broker, lane)
            .map_or((0, 0), |l| (l.pending(), l.parked.len() as u64))
    }

    /// The sequence of the parked entry due first.
    pub fn next_parked(&self, broker: &str, lane: &LaneId) -> Option<u64> {
        let state = self.state();
        state
            .lane(broker, lane)?
            .parked
            .keys()
            .next()
            .map(|&(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SubscriptionState;

    fn lane(sink: &str) -> LaneId {
        LaneId::new("sub", sink)
    }

    fn routed(store: &LaneStore, sink: &str, seqs: &[u64], cursor: u64) {
        let entries: Vec<(LaneId, u64)> = seqs.iter().map(|&s| (lane(sink), s)).collect();
        store
            .record_routes("default", &entries, &RouteProgress::Cursor(cursor))
            .unwrap();
    }

    fn seqs(store: &LaneStore, sink: &str) -> Vec<u64> {
        store
            .entries("default", &lane(sink), 0, usize::MAX)
            .iter()
            .map(|e| e.seq)
            .collect()
    }

    #[test]
    fn a_reopened_store_holds_what_was_synced() {
        let dir = tempfile::tempdir().unwrap();
        let store = LaneStore::open(dir.path()).unwrap();
        routed(&store, "a", &[1, 2, 3, 4], 4);
        routed(&store, "b", &[2, 4], 4);
        store.finish("default", &lane("a"), &[LaneEntry::routed(2)]);
        store.park("default", &lane("a"), 3, 500, 4);
        store.park("default", &lane("b"), 4, 100, 2);
        assert_eq!(store.unpark_due("default", &lane("b"), 200), (1, None));
        let state = SubscriptionState {
            sinks: vec!["a".into(), "b".into()],
            backfill: Some((5, 9)),
        };
        let progress = RouteProgress::Subscription("sub".into(), state.clone());
        store.record_routes("default", &[], &progress).unwrap();
        store.sync().unwrap();
        let before_b = store.entries("default", &lane("b"), 0, 10);
        drop(store);

        let store = LaneStore::open(dir.path()).unwrap();
        assert_eq!(seqs(&store, "a"), [1, 4]);
        assert_eq!(store.counts("default", &lane("a")), (2, 1));
        assert_eq!(store.next_parked("default", &lane("a")), Some(3));
        // The entry that came back from parking keeps its attempts and its stamp.
        assert_eq!(store.entries("default", &lane("b"), 0, 10), before_b);
        assert_eq!(before_b[1].attempts, 2);
        assert_ne!(before_b[1].stamp, 0);
        assert_eq!(store.cursor("default"), 4);
        let states = store.subscription_states("default");
        assert_eq!(states.len(), 1);
        assert_eq!(
            serde_json::from_slice::<SubscriptionState>(&states[0].1).unwrap(),
            state
        );
        // Dropping a lane and the subscription is kept too.
        assert_eq!(store.drop_lanes("default", "sub", Some(&["a".into()])), 3);
        assert_eq!(store.drop_lanes("default", "sub", None), 2);
        store.sync().unwrap();
        drop(store);
        let store = LaneStore::open(dir.path()).unwrap();
        assert_eq!(store.counts("default", &lane("a")), (0, 0));
        assert_eq!(store.counts("default", &lane("b")), (0, 0));
        assert!(store.subscription_states("default").is_empty());
    }

    #[test]
    fn what_was_not_synced_is_gone_after_a_reopen_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = LaneStore::open(dir.path()).unwrap();
        routed(&store, "a", &[1, 2], 2);
        store.sync().unwrap();
        routed(&store, "a", &[3], 3);
        drop(store);
        let store = LaneStore::open(dir.path()).unwrap();
        assert_eq!(seqs(&store, "a"), [1, 2]);
        assert_eq!(store.cursor("default"), 2);
    }

    #[test]
    fn a_torn_tail_is_cut_and_progress_never_outlives_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = LaneStore::open(dir.path()).unwrap();
        routed(&store, "a", &[1, 2], 2);
        store.sync().unwrap();
        let good = std::fs::metadata(dir.path().join(JOURNAL_FILE))
            .unwrap()
            .len();
        routed(&store, "a", &[3, 4], 4);
        store.sync().unwrap();
        drop(store);
        let path = dir.path().join(JOURNAL_FILE);
        let full = std::fs::read(&path).unwrap();
        // Every cut inside the second step's records keeps the first step whole and none
        // of the second's progress: a cursor at 4 with entries 3 and 4 missing would lose
        // them for good.
        for cut in good..full.len() as u64 {
            std::fs::write(&path, &full[..cut as usize]).unwrap();
            let store = LaneStore::open(dir.path()).unwrap();
            let cursor = store.cursor("default");
            let pending = seqs(&store, "a");
            if cursor == 4 {
                assert_eq!(pending, [1, 2, 3, 4], "cut at {cut}");
            } else {
                assert_eq!(cursor, 2, "cut at {cut}");
                assert!(pending.starts_with(&[1, 2]), "cut at {cut}: {pending:?}");
            }
        }
        // A damaged byte in the last record cuts that record.
        let mut damaged = full.clone();
        *damaged.last_mut().unwrap() ^= 0xff;
        std::fs::write(&path, &damaged).unwrap();
        let store = LaneStore::open(dir.path()).unwrap();
        assert_eq!(store.cursor("default"), 2);
        assert_eq!(seqs(&store, "a"), [1, 2, 3, 4]);
    }

    #[test]
    fn first_runs_before_the_changes_are_written_and_a_failure_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = LaneStore::open(dir.path()).unwrap();
        routed(&store, "a", &[1], 1);
        let len = || {
            std::fs::metadata(dir.path().join(JOURNAL_FILE))
                .unwrap()
                .len()
        };
        let before = len();
        // `first` fails: nothing is written, and the change waits for the next sync.
        let failed: std::io::Result<()> = store.sync_after(|| {
            assert_eq!(len(), before, "first runs before the write");
            Err(std::io::Error::other("flush failed"))
        });
        assert!(failed.is_err());
        assert_eq!(len(), before);
        // A change made while `first` runs is not part of this sync.
        store
            .sync_after(|| {
                routed(&store, "a", &[2], 2);
                Ok::<(), std::io::Error>(())
            })
            .unwrap();
        drop(store);
        let store = LaneStore::open(dir.path()).unwrap();
        assert_eq!(seqs(&store, "a"), [1]);
        assert_eq!(store.cursor("default"), 1);
    }

    #[test]
    fn a_file_that_is_not_a_journal_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(JOURNAL_FILE), b"something else").unwrap();
        let err = LaneStore::open(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains(JOURNAL_FILE) && err.contains("not a lane journal"),
            "{err}"
        );
    }

    #[test]
    fn the_journal_is_rewritten_when_it_grows_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let store = LaneStore::open_compacting_at(dir.path(), 4096).unwrap();
        let (mut written, mut last, mut rewrites) = (0, 0, 0);
        for step in 0..200u64 {
            let (a, b) = (step * 2 + 1, step * 2 + 2);
            routed(&store, "a", &[a, b], b);
            store.finish("default", &lane("a"), &[LaneEntry::routed(a)]);
            written += store.state().buf.len() as u64;
            store.sync().unwrap();
            let len = std::fs::metadata(&path).unwrap().len();
            rewrites += u32::from(len < last);
            last = len;
        }
        // Each rewrite holds only what is pending (the even entries so far), so the file
        // ends well below everything the steps wrote.
        assert!(rewrites >= 1, "{rewrites}");
        assert!(last < written / 2, "{last} of {written}");
        drop(store);
        let store = LaneStore::open(dir.path()).unwrap();
        let even: Vec<u64> = (1..=200).map(|s| s * 2).collect();
        assert_eq!(seqs(&store, "a"), even);
        assert_eq!(store.cursor("default"), 400);
    }

    #[test]
    fn a_put_back_after_a_reopen_gets_a_stamp_no_entry_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = LaneStore::open(dir.path()).unwrap();
        let replay = |store: &LaneStore, seq| {
            store
                .record_routes("default", &[(lane("a"), seq)], &RouteProgress::None)
                .unwrap()
        };
        replay(&store, 1);
        store.sync().unwrap();
        drop(store);
        let store = LaneStore::open(dir.path()).unwrap();
        let taken = store.entries("default", &lane("a"), 0, 10);
        // The deliverer took entry 1; a replay puts it back meanwhile.
        replay(&store, 1);
        let now = store.entries("default", &lane("a"), 0, 10);
        assert_ne!(taken[0].stamp, now[0].stamp);
        // Finishing the copy taken before keeps the one put back.
        store.finish("default", &lane("a"), &taken);
        assert_eq!(seqs(&store, "a"), [1]);
        store.finish("default", &lane("a"), &now);
        assert!(seqs(&store, "a").is_empty());
    }
}
