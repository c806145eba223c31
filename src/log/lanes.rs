//! The lane store: every lane's pending and parked entries, the router's cursor and the
//! subscriptions' routing states, held in memory and kept durable by an append-only
//! journal (`lanes.journal` beside sled).
//!
//! Every change is one [`Op`]: applied to the state and appended to a buffer under the
//! same lock, so the journal holds the changes in the order they were made. `sync`
//! writes the buffer to the file and syncs it (the writer calls it every 100 ms, as it
//! flushed sled before). A crash keeps a prefix of the journal: routing progress is
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

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{LaneEntry, LaneId, RouteProgress};

/// The journal's file name, in the data directory.
pub const JOURNAL_FILE: &str = "lanes.journal";

const MAGIC: &[u8; 8] = b"SYLANES1";

/// The journal is not rewritten while it is smaller than this.
pub const COMPACT_MIN: u64 = 16 << 20;

/// A record's payload is at most this long: a larger length is damage.
const MAX_RECORD: usize = 64 << 20;

/// Sequence numbers as runs `[start, end)`, by start; runs never touch or overlap.
#[derive(Debug, Default, Clone)]
struct Runs {
    runs: BTreeMap<u64, u64>,
    len: u64,
}

impl Runs {
    fn run_at(&self, x: u64) -> Option<(u64, u64)> {
        self.runs
            .range(..=x)
            .next_back()
            .map(|(&s, &e)| (s, e))
            .filter(|&(_, e)| x < e)
    }

    fn contains(&self, x: u64) -> bool {
        self.run_at(x).is_some()
    }

    /// Adds `x`; `false` when it was there already.
    fn insert(&mut self, x: u64) -> bool {
        let before = self.runs.range(..=x).next_back().map(|(&s, &e)| (s, e));
        if before.is_some_and(|(_, e)| x < e) {
            return false;
        }
        let after = x
            .checked_add(1)
            .and_then(|n| self.runs.get(&n).map(|&e| (n, e)));
        match (before.filter(|&(_, e)| e == x), after) {
            (Some((s, _)), Some((n, e))) => {
                self.runs.remove(&n);
                self.runs.insert(s, e);
            }
            (Some((s, _)), None) => {
                self.runs.insert(s, x + 1);
            }
            (None, Some((n, e))) => {
                self.runs.remove(&n);
                self.runs.insert(x, e);
            }
            (None, None) => {
                self.runs.insert(x, x + 1);
            }
        }
        self.len += 1;
        true
    }

    /// Adds the run `[start, end)` (a snapshot's runs do not overlap; should damage
    /// make them, the run goes in one number at a time).
    fn insert_run(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        if self.run_at(start).is_some() || self.runs.range(start..end).next().is_some() {
            for x in start..end {
                self.insert(x);
            }
            return;
        }
        self.runs.insert(start, end);
        self.len += end - start;
    }

    /// Removes `x`; `false` when it was not there.
    fn remove(&mut self, x: u64) -> bool {
        let Some((s, e)) = self.run_at(x) else {
            return false;
        };
        if s == x {
            self.runs.remove(&s);
        } else {
            self.runs.insert(s, x);
        }
        if x + 1 < e {
            self.runs.insert(x + 1, e);
        }
        self.len -= 1;
        true
    }

    /// The numbers from `from` on, in order.
    fn iter_from(&self, from: u64) -> impl Iterator<Item = u64> + '_ {
        let first = self.run_at(from).map(|(_, e)| (from, e));
        first
            .into_iter()
            .chain(
                self.runs
                    .range((Bound::Excluded(from), Bound::Unbounded))
                    .map(|(&s, &e)| (s, e)),
            )
            .flat_map(|(s, e)| s..e)
    }
}

/// One lane's entries.
#[derive(Debug, Default)]
struct Lane {
    broker: u32,
    prefix: Vec<u8>,
    /// Entries the router made: no attempts yet, stamp 0.
    plain: Runs,
    /// The other pending entries: seq → (attempts, stamp).
    special: BTreeMap<u64, (u32, u64)>,
    /// Parked entries: (due, seq) → attempts.
    parked: BTreeMap<(u64, u64), u32>,
}

impl Lane {
    fn pending(&self) -> u64 {
        self.plain.len + self.special.len() as u64
    }

    /// The value of the pending entry `seq`.
    fn value(&self, seq: u64) -> Option<(u32, u64)> {
        if self.plain.contains(seq) {
            return Some((0, 0));
        }
        self.special.get(&seq).copied()
    }

    /// Sets the entry `seq` pending with this value; whether it was pending before.
    fn put(&mut self, seq: u64, attempts: u32, stamp: u64) -> bool {
        let was = self.take(seq);
        if attempts == 0 && stamp == 0 {
            self.plain.insert(seq);
        } else {
            self.special.insert(seq, (attempts, stamp));
        }
        was
    }

    /// Removes the pending entry `seq`; whether there was one.
    fn take(&mut self, seq: u64) -> bool {
        self.plain.remove(seq) || self.special.remove(&seq).is_some()
    }

    /// Pending entries from `from` on, in order, at most `limit`.
    fn entries(&self, from: u64, limit: usize) -> Vec<LaneEntry> {
        let mut plain = self.plain.iter_from(from).peekable();
        let mut special = self.special.range(from..).peekable();
        let mut out = Vec::new();
        while out.len() < limit {
            let next_plain = plain.peek().copied();
            let next_special = special.peek().map(|(&s, &v)| (s, v));
            let entry = match (next_plain, next_special) {
                (Some(p), Some((s, _))) if p < s => {
                    plain.next();
                    LaneEntry::routed(p)
                }
                (_, Some((s, (attempts, stamp)))) => {
                    special.next();
                    LaneEntry {
                        seq: s,
                        attempts,
                        stamp,
                    }
                }
                (Some(p), None) => {
                    plain.next();
                    LaneEntry::routed(p)
                }
                (None, None) => break,
            };
            out.push(entry);
        }
        out
    }
}

#[derive(Debug, Default)]
struct Broker {
    name: String,
    cursor: u64,
    /// Subscription name → its state as JSON.
    subscriptions: BTreeMap<String, Vec<u8>>,
}

/// One change to the lane store, as the journal holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    /// Names broker `id` (ids are the journal's own; a snapshot assigns them anew).
    Broker {
        id: u32,
        name: String,
    },
    /// Names lane `id`: a lane of broker `broker` with this key prefix.
    Lane {
        id: u32,
        broker: u32,
        prefix: Vec<u8>,
    },
    /// Entries made pending with this value (routes, put-backs).
    Put {
        attempts: u32,
        stamp: u64,
        entries: Vec<(u32, u64)>,
    },
    /// A run of routed entries `[start, end)` (snapshots).
    Run {
        lane: u32,
        start: u64,
        end: u64,
    },
    /// Finished entries leave their lane.
    Remove {
        lane: u32,
        seqs: Vec<u64>,
    },
    /// An entry leaves its lane (if it is there) for the parked set.
    Park {
        lane: u32,
        seq: u64,
        due: u64,
        attempts: u32,
    },
    /// Parked entries come back pending, with this stamp.
    Unpark {
        lane: u32,
        stamp: u64,
        entries: Vec<(u64, u64, u32)>,
    },
    /// Every entry of a lane goes (a sink or subscription removed).
    Drop {
        lane: u32,
    },
    Cursor {
        broker: u32,
        seq: u64,
    },
    Subscription {
        broker: u32,
        name: String,
        state: Vec<u8>,
    },
    Unsubscribe {
        broker: u32,
        name: String,
    },
}

mod tag {
    pub const BROKER: u8 = 1;
    pub const LANE: u8 = 2;
    pub const PUT: u8 = 3;
    pub const RUN: u8 = 4;
    pub const REMOVE: u8 = 5;
    pub const PARK: u8 = 6;
    pub const UNPARK: u8 = 7;
    pub const DROP: u8 = 8;
    pub const CURSOR: u8 = 9;
    pub const SUBSCRIPTION: u8 = 10;
    pub const UNSUBSCRIBE: u8 = 11;
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

impl Op {
    /// Appends the op as one journal record: length, CRC-32 of the payload, payload.
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 8]);
        let u32s = |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&v.to_le_bytes());
        let u64s = |out: &mut Vec<u8>, v: u64| out.extend_from_slice(&v.to_le_bytes());
        match self {
            Op::Broker { id, name } => {
                out.push(tag::BROKER);
                u32s(out, *id);
                put_bytes(out, name.as_bytes());
            }
            Op::Lane { id, broker, prefix } => {
                out.push(tag::LANE);
                u32s(out, *id);
                u32s(out, *broker);
                put_bytes(out, prefix);
            }
            Op::Put {
                attempts,
                stamp,
                entries,
            } => {
                out.push(tag::PUT);
                u32s(out, *attempts);
                u64s(out, *stamp);
                u32s(out, entries.len() as u32);
                for (lane, seq) in entries {
                    u32s(out, *lane);
                    u64s(out, *seq);
                }
            }
            Op::Run { lane, start, end } => {
                out.push(tag::RUN);
                u32s(out, *lane);
                u64s(out, *start);
                u64s(out, *end);
            }
            Op::Remove { lane, seqs } => {
                out.push(tag::REMOVE);
                u32s(out, *lane);
                u32s(out, seqs.len() as u32);
                for s in seqs {
                    u64s(out, *s);
                }
            }
            Op::Park {
                lane,
                seq,
                due,
                attempts,
            } => {
                out.push(tag::PARK);
                u32s(out, *lane);
                u64s(out, *seq);
                u64s(out, *due);
                u32s(out, *attempts);
            }
            Op::Unpark {
                lane,
                stamp,
                entries,
            } => {
                out.push(tag::UNPARK);
                u32s(out, *lane);
                u64s(out, *stamp);
                u32s(out, entries.len() as u32);
                for (due, seq, attempts) in entries {
                    u64s(out, *due);
                    u64s(out, *seq);
                    u32s(out, *attempts);
                }
            }
            Op::Drop { lane } => {
                out.push(tag::DROP);
                u32s(out, *lane);
            }
            Op::Cursor { broker, seq } => {
                out.push(tag::CURSOR);
                u32s(out, *broker);
                u64s(out, *seq);
            }
            Op::Subscription {
                broker,
                name,
                state,
            } => {
                out.push(tag::SUBSCRIPTION);
                u32s(out, *broker);
                put_bytes(out, name.as_bytes());
                put_bytes(out, state);
            }
            Op::Unsubscribe { broker, name } => {
                out.push(tag::UNSUBSCRIBE);
                u32s(out, *broker);
                put_bytes(out, name.as_bytes());
            }
        }
        let len = (out.len() - start - 8) as u32;
        let crc = crc32fast::hash(&out[start + 8..]);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes one payload; `None` when it is not a whole, known op.
    fn decode(payload: &[u8]) -> Option<Op> {
        let mut r = Reader(payload);
        let op = match r.u8()? {
            tag::BROKER => Op::Broker {
                id: r.u32()?,
                name: r.string()?,
            },
            tag::LANE => Op::Lane {
                id: r.u32()?,
                broker: r.u32()?,
                prefix: r.bytes()?.to_vec(),
            },
            tag::PUT => {
                let (attempts, stamp, n) = (r.u32()?, r.u64()?, r.u32()?);
                let mut entries = Vec::with_capacity((n as usize).min(r.0.len() / 12));
                for _ in 0..n {
                    entries.push((r.u32()?, r.u64()?));
                }
                Op::Put {
                    attempts,
                    stamp,
                    entries,
                }
            }
            tag::RUN => Op::Run {
                lane: r.u32()?,
                start: r.u64()?,
                end: r.u64()?,
            },
            tag::REMOVE => {
                let (lane, n) = (r.u32()?, r.u32()?);
                let mut seqs = Vec::with_capacity((n as usize).min(r.0.len() / 8));
                for _ in 0..n {
                    seqs.push(r.u64()?);
                }
                Op::Remove { lane, seqs }
            }
            tag::PARK => Op::Park {
                lane: r.u32()?,
                seq: r.u64()?,
                due: r.u64()?,
                attempts: r.u32()?,
            },
            tag::UNPARK => {
                let (lane, stamp, n) = (r.u32()?, r.u64()?, r.u32()?);
                let mut entries = Vec::with_capacity((n as usize).min(r.0.len() / 20));
                for _ in 0..n {
                    entries.push((r.u64()?, r.u64()?, r.u32()?));
                }
                Op::Unpark {
                    lane,
                    stamp,
                    entries,
                }
            }
            tag::DROP => Op::Drop { lane: r.u32()? },
            tag::CURSOR => Op::Cursor {
                broker: r.u32()?,
                seq: r.u64()?,
            },
            tag::SUBSCRIPTION => Op::Subscription {
                broker: r.u32()?,
                name: r.string()?,
                state: r.bytes()?.to_vec(),
            },
            tag::UNSUBSCRIBE => Op::Unsubscribe {
                broker: r.u32()?,
                name: r.string()?,
            },
            _ => return None,
        };
        r.0.is_empty().then_some(op)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

/// The store's state, and the journal records not yet written.
#[derive(Default)]
struct State {
    brokers: Vec<Broker>,
    broker_ids: HashMap<String, u32>,
    lanes: Vec<Lane>,
    /// Per broker id, each lane's id by its key prefix.
    lane_ids: HashMap<u32, HashMap<Vec<u8>, u32>>,
    /// The next stamp handed out (above every stamp held).
    next_stamp: u64,
    /// Encoded ops not yet written to the journal.
    buf: Vec<u8>,
}

impl State {
    /// Applies one op. Ids an op names are created as needed, so that a journal whose
    /// naming record was lost to damage still loads what it can.
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Broker { id, name } => {
                let b = self.broker_mut(*id);
                b.name.clone_from(name);
                self.broker_ids.insert(name.clone(), *id);
            }
            Op::Lane { id, broker, prefix } => {
                let lane = self.lane_mut(*id);
                lane.broker = *broker;
                lane.prefix.clone_from(prefix);
                self.lane_ids
                    .entry(*broker)
                    .or_default()
                    .insert(prefix.clone(), *id);
            }
            Op::Put {
                attempts,
                stamp,
                entries,
            } => {
                self.next_stamp = self.next_stamp.max(stamp + 1);
                for &(lane, seq) in entries {
                    self.lane_mut(lane).put(seq, *attempts, *stamp);
                }
            }
            Op::Run { lane, start, end } => self.lane_mut(*lane).plain.insert_run(*start, *end),
            Op::Remove { lane, seqs } => {
                let lane = self.lane_mut(*lane);
                for &seq in seqs {
                    lane.take(seq);
                }
            }
            Op::Park {
                lane,
                seq,
                due,
                attempts,
            } => {
                let lane = self.lane_mut(*lane);
                lane.take(*seq);
                lane.parked.insert((*due, *seq), *attempts);
            }
            Op::Unpark {
                lane,
                stamp,
                entries,
            } => {
                self.next_stamp = self.next_stamp.max(stamp + 1);
                let lane = self.lane_mut(*lane);
                for &(due, seq, attempts) in entries {
                    lane.parked.remove(&(due, seq));
                    lane.put(seq, attempts, *stamp);
                }
            }
            Op::Drop { lane } => {
                let lane = self.lane_mut(*lane);
                lane.plain = Runs::default();
                lane.special.clear();
                lane.parked.clear();
            }
            Op::Cursor { broker, seq } => self.broker_mut(*broker).cursor = *seq,
            Op::Subscription {
                broker,
                name,
                state,
            } => {
                self.broker_mut(*broker)
                    .subscriptions
                    .insert(name.clone(), state.clone());
            }
            Op::Unsubscribe { broker, name } => {
                self.broker_mut(*broker).subscriptions.remove(name);
            }
        }
    }

    /// Applies `op` and appends it to the journal buffer.
    fn record(&mut self, op: Op) {
        self.apply(&op);
        op.encode(&mut self.buf);
    }

    fn broker_mut(&mut self, id: u32) -> &mut Broker {
        let i = id as usize;
        if self.brokers.len() <= i {
            self.brokers.resize_with(i + 1, Broker::default);
        }
        &mut self.brokers[i]
    }

    fn lane_mut(&mut self, id: u32) -> &mut Lane {
        let i = id as usize;
        if self.lanes.len() <= i {
            self.lanes.resize_with(i + 1, Lane::default);
        }
        &mut self.lanes[i]
    }

    fn broker_id(&self, name: &str) -> Option<u32> {
        self.broker_ids.get(name).copied()
    }

    /// The broker's id, named in the journal when it is new.
    fn broker_id_or_new(&mut self, name: &str) -> u32 {
        if let Some(id) = self.broker_id(name) {
            return id;
        }
        let id = self.brokers.len() as u32;
        self.record(Op::Broker {
            id,
            name: name.to_string(),
        });
        id
    }

    fn lane_id(&self, broker: &str, prefix: &[u8]) -> Option<u32> {
        let b = self.broker_id(broker)?;
        self.lane_ids.get(&b)?.get(prefix).copied()
    }

    /// The lane's id, named in the journal when it is new.
    fn lane_id_or_new(&mut self, broker: &str, prefix: Vec<u8>) -> u32 {
        let b = self.broker_id_or_new(broker);
        if let Some(&id) = self.lane_ids.get(&b).and_then(|l| l.get(&prefix)) {
            return id;
        }
        let id = self.lanes.len() as u32;
        self.record(Op::Lane {
            id,
            broker: b,
            prefix,
        });
        id
    }

    fn lane(&self, broker: &str, lane: &LaneId) -> Option<&Lane> {
        let id = self.lane_id(broker, &lane.key_prefix())?;
        self.lanes.get(id as usize)
    }

    fn stamp(&mut self) -> u64 {
        self.next_stamp = self.next_stamp.max(1);
        let s = self.next_stamp;
        self.next_stamp += 1;
        s
    }

    /// The whole state as a journal of its own.
    fn snapshot(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for (id, b) in self.brokers.iter().enumerate() {
            let id = id as u32;
            Op::Broker {
                id,
                name: b.name.clone(),
            }
            .encode(&mut out);
            if b.cursor > 0 {
                Op::Cursor {
                    broker: id,
                    seq: b.cursor,
                }
                .encode(&mut out);
            }
            for (name, state) in &b.subscriptions {
                Op::Subscription {
                    broker: id,
                    name: name.clone(),
                    state: state.clone(),
                }
                .encode(&mut out);
            }
        }
        for (id, lane) in self.lanes.iter().enumerate() {
            let id = id as u32;
            Op::Lane {
                id,
                broker: lane.broker,
                prefix: lane.prefix.clone(),
            }
            .encode(&mut out);
            // Parked first: a park takes the entry from the pending ones, which are
            // not there yet.
            for (&(due, seq), &attempts) in &lane.parked {
                Op::Park {
                    lane: id,
                    seq,
                    due,
                    attempts,
                }
                .encode(&mut out);
            }
            for (&start, &end) in &lane.plain.runs {
                Op::Run {
                    lane: id,
                    start,
                    end,
                }
                .encode(&mut out);
            }
            for (&seq, &(attempts, stamp)) in &lane.special {
                Op::Put {
                    attempts,
                    stamp,
                    entries: vec![(id, seq)],
                }
                .encode(&mut out);
            }
        }
        out
    }
}

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

/// Entries of an older store, brought in when there is no journal yet.
#[derive(Debug, Default)]
pub struct Import {
    /// Broker, lane prefix, seq, attempts (0 for entries the router made).
    pub pending: Vec<(String, Vec<u8>, u64, u32)>,
    /// Broker, lane prefix, due, seq, attempts.
    pub parked: Vec<(String, Vec<u8>, u64, u64, u32)>,
    pub cursors: Vec<(String, u64)>,
    /// Broker, subscription, state JSON.
    pub subscriptions: Vec<(String, String, Vec<u8>)>,
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
    /// Whether `dir` has a lane journal (an older data directory has none yet).
    pub fn exists(dir: &Path) -> bool {
        dir.join(JOURNAL_FILE).exists()
    }

    /// Opens the journal in `dir`, or creates one holding `import`.
    pub fn open(dir: &Path, import: Option<Import>) -> Result<LaneStore, LanesError> {
        Self::open_compacting_at(dir, import, COMPACT_MIN)
    }

    /// [`LaneStore::open`], rewriting the journal once it is `compact_min` bytes or
    /// more (and four times the last snapshot).
    fn open_compacting_at(
        dir: &Path,
        import: Option<Import>,
        compact_min: u64,
    ) -> Result<LaneStore, LanesError> {
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
            let mut state = State::default();
            for (broker, prefix, seq, attempts) in import.iter().flat_map(|i| &i.pending) {
                let lane = state.lane_id_or_new(broker, prefix.clone());
                let stamp = if *attempts == 0 { 0 } else { state.stamp() };
                state.apply(&Op::Put {
                    attempts: *attempts,
                    stamp,
                    entries: vec![(lane, *seq)],
                });
            }
            for (broker, prefix, due, seq, attempts) in import.iter().flat_map(|i| &i.parked) {
                let lane = state.lane_id_or_new(broker, prefix.clone());
                let parked = &mut state.lane_mut(lane).parked;
                parked.insert((*due, *seq), *attempts);
            }
            for (broker, seq) in import.iter().flat_map(|i| &i.cursors) {
                let b = state.broker_id_or_new(broker);
                state.apply(&Op::Cursor {
                    broker: b,
                    seq: *seq,
                });
            }
            for (broker, name, json) in import.iter().flat_map(|i| &i.subscriptions) {
                let b = state.broker_id_or_new(broker);
                state.apply(&Op::Subscription {
                    broker: b,
                    name: name.clone(),
                    state: json.clone(),
                });
            }
            state
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

    /// [`LaneStore::sync`], running `first` between taking the changes and writing
    /// them: whatever another store holds that was written before any of these changes
    /// is made durable by `first` before they are. (sled's flush goes there: a lane's
    /// finish must never outlive the dead letter stored before it.)
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
    use crate::log::SubscriptionState;

    #[test]
    fn runs_merge_split_and_count() {
        let mut r = Runs::default();
        for x in [5, 7, 6, 1, 2, 9] {
            assert!(r.insert(x));
        }
        assert!(!r.insert(6));
        assert_eq!(r.len, 6);
        assert_eq!(r.runs.len(), 3, "{:?}", r.runs); // 1-2, 5-7, 9
        assert_eq!(r.iter_from(0).collect::<Vec<_>>(), [1, 2, 5, 6, 7, 9]);
        assert_eq!(r.iter_from(6).collect::<Vec<_>>(), [6, 7, 9]);
        assert_eq!(r.iter_from(8).collect::<Vec<_>>(), [9]);
        assert!(r.remove(6));
        assert!(!r.remove(6));
        assert!(!r.remove(8));
        assert_eq!(r.iter_from(0).collect::<Vec<_>>(), [1, 2, 5, 7, 9]);
        assert!(r.remove(1) && r.remove(9) && r.remove(7));
        assert_eq!(r.iter_from(0).collect::<Vec<_>>(), [2, 5]);
        assert_eq!(r.len, 2);
        assert!(r.insert(3) && r.insert(4));
        assert_eq!(r.runs.len(), 1);
        r.insert_run(10, 20);
        assert_eq!(r.len, 14);
        assert_eq!(r.iter_from(18).collect::<Vec<_>>(), [18, 19]);
    }

    #[test]
    fn a_million_routed_entries_of_one_lane_are_one_run() {
        let mut r = Runs::default();
        for x in 1..=1_000_000 {
            r.insert(x);
        }
        assert_eq!((r.len, r.runs.len()), (1_000_000, 1));
    }

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
        let store = LaneStore::open(dir.path(), None).unwrap();
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

        let store = LaneStore::open(dir.path(), None).unwrap();
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
        let store = LaneStore::open(dir.path(), None).unwrap();
        assert_eq!(store.counts("default", &lane("a")), (0, 0));
        assert_eq!(store.counts("default", &lane("b")), (0, 0));
        assert!(store.subscription_states("default").is_empty());
    }

    #[test]
    fn what_was_not_synced_is_gone_after_a_reopen_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = LaneStore::open(dir.path(), None).unwrap();
        routed(&store, "a", &[1, 2], 2);
        store.sync().unwrap();
        routed(&store, "a", &[3], 3);
        drop(store);
        let store = LaneStore::open(dir.path(), None).unwrap();
        assert_eq!(seqs(&store, "a"), [1, 2]);
        assert_eq!(store.cursor("default"), 2);
    }

    #[test]
    fn a_torn_tail_is_cut_and_progress_never_outlives_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = LaneStore::open(dir.path(), None).unwrap();
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
            let store = LaneStore::open(dir.path(), None).unwrap();
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
        let store = LaneStore::open(dir.path(), None).unwrap();
        assert_eq!(store.cursor("default"), 2);
        assert_eq!(seqs(&store, "a"), [1, 2, 3, 4]);
    }

    #[test]
    fn first_runs_before_the_changes_are_written_and_a_failure_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = LaneStore::open(dir.path(), None).unwrap();
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
        let store = LaneStore::open(dir.path(), None).unwrap();
        assert_eq!(seqs(&store, "a"), [1]);
        assert_eq!(store.cursor("default"), 1);
    }

    #[test]
    fn a_file_that_is_not_a_journal_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(JOURNAL_FILE), b"something else").unwrap();
        let err = LaneStore::open(dir.path(), None).err().unwrap().to_string();
        assert!(
            err.contains(JOURNAL_FILE) && err.contains("not a lane journal"),
            "{err}"
        );
    }

    #[test]
    fn the_journal_is_rewritten_when_it_grows_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let store = LaneStore::open_compacting_at(dir.path(), None, 4096).unwrap();
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
        let store = LaneStore::open(dir.path(), None).unwrap();
        let even: Vec<u64> = (1..=200).map(|s| s * 2).collect();
        assert_eq!(seqs(&store, "a"), even);
        assert_eq!(store.cursor("default"), 400);
    }

    #[test]
    fn a_put_back_after_a_reopen_gets_a_stamp_no_entry_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = LaneStore::open(dir.path(), None).unwrap();
        let replay = |store: &LaneStore, seq| {
            store
                .record_routes("default", &[(lane("a"), seq)], &RouteProgress::None)
                .unwrap()
        };
        replay(&store, 1);
        store.sync().unwrap();
        drop(store);
        let store = LaneStore::open(dir.path(), None).unwrap();
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

    #[test]
    fn every_op_decodes_to_itself() {
        let ops = [
            Op::Broker {
                id: 3,
                name: "default".into(),
            },
            Op::Lane {
                id: 1,
                broker: 3,
                prefix: b"s\0http://x\0".to_vec(),
            },
            Op::Put {
                attempts: 2,
                stamp: 9,
                entries: vec![(1, 10), (2, 11)],
            },
            Op::Run {
                lane: 1,
                start: 4,
                end: 8,
            },
            Op::Remove {
                lane: 1,
                seqs: vec![4, 5],
            },
            Op::Park {
                lane: 1,
                seq: 6,
                due: 77,
                attempts: 3,
            },
            Op::Unpark {
                lane: 1,
                stamp: 12,
                entries: vec![(77, 6, 3)],
            },
            Op::Drop { lane: 1 },
            Op::Cursor { broker: 3, seq: 99 },
            Op::Subscription {
                broker: 3,
                name: "s".into(),
                state: b"{}".to_vec(),
            },
            Op::Unsubscribe {
                broker: 3,
                name: "s".into(),
            },
        ];
        for op in ops {
            let mut buf = Vec::new();
            op.encode(&mut buf);
            assert_eq!(Op::decode(&buf[8..]), Some(op.clone()));
            // A payload cut short is not an op.
            assert_eq!(Op::decode(&buf[8..buf.len() - 1]), None, "{op:?}");
        }
    }
}
