//! The lane state in memory: every lane's pending and parked entries, the router's
//! cursor and the subscriptions' routing states, changed only by applying [`Op`]s.

use std::collections::{BTreeMap, HashMap};

use super::intervals::Runs;
use super::ops::Op;
use super::MAGIC;
use crate::store::{LaneEntry, LaneId};

/// One lane's entries.
#[derive(Debug, Default)]
pub struct Lane {
    pub broker: u32,
    pub prefix: Vec<u8>,
    /// Entries the router made: no attempts yet, stamp 0.
    pub plain: Runs,
    /// The other pending entries: seq → (attempts, stamp).
    pub special: BTreeMap<u64, (u32, u64)>,
    /// Parked entries: (due, seq) → attempts.
    pub parked: BTreeMap<(u64, u64), u32>,
}

impl Lane {
    pub fn pending(&self) -> u64 {
        self.plain.len + self.special.len() as u64
    }

    /// The value of the pending entry `seq`.
    pub fn value(&self, seq: u64) -> Option<(u32, u64)> {
        if self.plain.contains(seq) {
            return Some((0, 0));
        }
        self.special.get(&seq).copied()
    }

    /// Sets the entry `seq` pending with this value; whether it was pending before.
    pub fn put(&mut self, seq: u64, attempts: u32, stamp: u64) -> bool {
        let was = self.take(seq);
        if attempts == 0 && stamp == 0 {
            self.plain.insert(seq);
        } else {
            self.special.insert(seq, (attempts, stamp));
        }
        was
    }

    /// Removes the pending entry `seq`; whether there was one.
    pub fn take(&mut self, seq: u64) -> bool {
        self.plain.remove(seq) || self.special.remove(&seq).is_some()
    }

    /// Pending entries from `from` on, in order, at most `limit`.
    pub fn entries(&self, from: u64, limit: usize) -> Vec<LaneEntry> {
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
pub struct Broker {
    pub name: String,
    pub cursor: u64,
    /// Subscription name → its state as JSON.
    pub subscriptions: BTreeMap<String, Vec<u8>>,
}

/// The store's state, and the journal records not yet written.
#[derive(Default)]
pub struct State {
    pub brokers: Vec<Broker>,
    pub broker_ids: HashMap<String, u32>,
    pub lanes: Vec<Lane>,
    /// Per broker id, each lane's id by its key prefix.
    pub lane_ids: HashMap<u32, HashMap<Vec<u8>, u32>>,
    /// The next stamp handed out (above every stamp held).
    pub next_stamp: u64,
    /// Encoded ops not yet written to the journal.
    pub buf: Vec<u8>,
}

impl State {
    /// Applies one op. Ids an op names are created as needed, so that a journal whose
    /// naming record was lost to damage still loads what it can.
    pub fn apply(&mut self, op: &Op) {
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
    pub fn record(&mut self, op: Op) {
        self.apply(&op);
        op.encode(&mut self.buf);
    }

    pub fn broker_mut(&mut self, id: u32) -> &mut Broker {
        let i = id as usize;
        if self.brokers.len() <= i {
            self.brokers.resize_with(i + 1, Broker::default);
        }
        &mut self.brokers[i]
    }

    pub fn lane_mut(&mut self, id: u32) -> &mut Lane {
        let i = id as usize;
        if self.lanes.len() <= i {
            self.lanes.resize_with(i + 1, Lane::default);
        }
        &mut self.lanes[i]
    }

    pub fn broker_id(&self, name: &str) -> Option<u32> {
        self.broker_ids.get(name).copied()
    }

    /// The broker's id, named in the journal when it is new.
    pub fn broker_id_or_new(&mut self, name: &str) -> u32 {
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

    pub fn lane_id(&self, broker: &str, prefix: &[u8]) -> Option<u32> {
        let b = self.broker_id(broker)?;
        self.lane_ids.get(&b)?.get(prefix).copied()
    }

    /// The lane's id, named in the journal when it is new.
    pub fn lane_id_or_new(&mut self, broker: &str, prefix: Vec<u8>) -> u32 {
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

    pub fn lane(&self, broker: &str, lane: &LaneId) -> Option<&Lane> {
        let id = self.lane_id(broker, &lane.key_prefix())?;
        self.lanes.get(id as usize)
    }

    pub fn stamp(&mut self) -> u64 {
        self.next_stamp = self.next_stamp.max(1);
        let s = self.next_stamp;
        self.next_stamp += 1;
        s
    }

    /// The whole state as a journal of its own.
    pub fn snapshot(&self) -> Vec<u8> {
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
