//! A segment's index file (`<first>.idx`): per record, where its frame ends in the
//! segment and the record's length, two big-endian u32 (a frame starts where the one
//! before it ends, or at 0). Held in memory too, 8 bytes a record.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::frames::HEADER;
use super::segment_name;

/// One record's index entry: where its frame ends in the segment (it starts where the
/// one before it ends, or at 0), and the record's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub end: u32,
    pub record_len: u32,
}

pub const SLOT: usize = 8;

/// The index file of the segment that starts at `first`.
pub fn index_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{}.idx", segment_name(first)))
}

/// The entries of an index file that check out: each frame ends after the one before
/// it, holds at least a header and its record, and ends inside the segment (`len`).
pub fn read_index(dir: &Path, first: u64, len: u64) -> Vec<Slot> {
    let Ok(bytes) = std::fs::read(index_path(dir, first)) else {
        return Vec::new();
    };
    let mut slots = Vec::with_capacity(bytes.len() / SLOT);
    let mut start = 0u64;
    for entry in bytes.chunks_exact(SLOT) {
        let end = u32::from_be_bytes(entry[..4].try_into().unwrap_or_default());
        let record_len = u32::from_be_bytes(entry[4..].try_into().unwrap_or_default());
        let frame = u64::from(end).saturating_sub(start);
        if u64::from(end) <= start
            || u64::from(end) > len
            || frame < HEADER as u64 + u64::from(record_len)
        {
            break;
        }
        slots.push(Slot { end, record_len });
        start = u64::from(end);
    }
    slots
}

pub fn encode_slots(slots: &[Slot]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(slots.len() * SLOT);
    encode_slots_into(slots, &mut buf);
    buf
}

pub fn encode_slots_into(slots: &[Slot], buf: &mut Vec<u8>) {
    buf.reserve(slots.len() * SLOT);
    for s in slots {
        buf.extend_from_slice(&s.end.to_be_bytes());
        buf.extend_from_slice(&s.record_len.to_be_bytes());
    }
}

/// Writes a segment's whole index anew, synced.
pub fn rewrite_index(dir: &Path, first: u64, slots: &[Slot]) -> std::io::Result<()> {
    let f = File::create(index_path(dir, first))?;
    f.write_all_at(&encode_slots(slots), 0)?;
    f.sync_data()
}
