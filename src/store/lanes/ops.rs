//! The journal's records: one [`Op`] per change to the lane state, and its encoding
//! (little-endian, each record framed by the journal with its length and CRC).

/// One change to the lane store, as the journal holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
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

pub mod tag {
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

pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

impl Op {
    /// Appends the op as one journal record: length, CRC-32 of the payload, payload.
    pub fn encode(&self, out: &mut Vec<u8>) {
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
    pub fn decode(payload: &[u8]) -> Option<Op> {
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

pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    pub fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
