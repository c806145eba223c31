//! Each broker's events: append-only segment files ([`segments`]) of checksummed
//! frames ([`frames`]) with an index file each ([`index`]), the dedupe index in memory with a sidecar per closed segment
//! ([`dedupe_index`]), and the record encoding ([`record`]). Files of one segment are
//! named after the first sequence it holds.

pub mod dedupe_index;
pub mod frames;
pub mod index;
pub mod record;
pub mod segments;

use std::path::{Path, PathBuf};

/// A segment's file name: its first sequence, zero-padded so that names sort.
pub fn segment_name(first: u64) -> String {
    format!("{first:020}")
}

/// The dedupe sidecar of the segment that starts at `first`.
pub fn sidecar_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{}.keys", segment_name(first)))
}
