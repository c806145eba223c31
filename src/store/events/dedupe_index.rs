//! The dedupe index: which dedupe key was stored at which sequence, for the keys first
//! seen inside the window. It lives in memory, so that a stored event costs no lookup
//! or insert at a random place on disk for its key.
//!
//! Entries are a 64-bit digest of the key and the sequence of the record that carries
//! the key, in hash maps partitioned by arrival time (an eighth of the window each), so
//! that expiry drops whole partitions. A digest only nominates a record: the caller
//! reads the frame back and compares the key itself and the record's arrival, so two
//! keys with the same digest never make an event a duplicate of another. (The only
//! cost of such a collision is that the older key's entry is shadowed, and a
//! duplicate of it is stored again: at least once, never lost.)
//!
//! The segment frames carry the keys, so the index is rebuilt from them at open. To
//! keep open fast, each segment, once closed, gets a sidecar file beside it
//! (`<segment>.keys`: its keyed records' sequence, digest and arrival, with a CRC).
//! A sidecar is written without a sync: one that a crash tore fails its CRC, and its
//! segment is read instead. The active segment is always read.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};

use super::{segment_name, sidecar_path};

/// One keyed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyEntry {
    pub seq: u64,
    pub digest: u64,
    /// Arrival, nanoseconds since the Unix epoch.
    pub arrival: u64,
}

/// The digest of a dedupe key: FNV-1a, then a 64-bit finalizer so that every bit
/// depends on every byte. Stable across builds (sidecars store it).
pub fn digest(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The digests are already mixed: the maps use them as their hash.
#[derive(Default, Clone, Copy)]
struct Passthrough(u64);

impl Hasher for Passthrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type DigestMap = HashMap<u64, u64, BuildHasherDefault<Passthrough>>;

/// A partition takes at most this many keys, then the next one starts: 7/8 of 2^17, the
/// most a map of 2^17 slots holds, so that a full partition uses all of its 2.2 MiB
/// (about 19 bytes a key) and growing one never copies more than that.
const PARTITION_KEYS: usize = 114_688;

struct Partition {
    /// Arrival time divided by the span.
    number: u64,
    /// Digest → sequence.
    map: DigestMap,
}

/// One broker's dedupe index.
pub struct DedupeIndex {
    dir: PathBuf,
    span: u64,
    /// Oldest first.
    partitions: VecDeque<Partition>,
    /// The segment being written and its keyed records so far (for its sidecar).
    segment: Option<u64>,
    pending: Vec<KeyEntry>,
}

const MAGIC: &[u8; 8] = b"SYKEYS01";
const ENTRY: usize = 24;

impl DedupeIndex {
    /// An empty index for the segments in `dir`, partitioned by an eighth of `window`.
    pub fn new(dir: &Path, window_nanos: u64) -> DedupeIndex {
        DedupeIndex {
            dir: dir.to_path_buf(),
            span: (window_nanos / 8).max(1),
            partitions: VecDeque::new(),
            segment: None,
            pending: Vec::new(),
        }
    }

    /// The sequences stored under `digest`, newest first.
    pub fn candidates(&self, digest: u64) -> impl Iterator<Item = u64> + '_ {
        self.partitions
            .iter()
            .rev()
            .filter_map(move |p| p.map.get(&digest).copied())
    }

    /// Notes that the next record goes to `segment`: when that is a new one, the
    /// previous segment is closed and its sidecar written.
    pub fn enter_segment(&mut self, segment: u64) {
        if self.segment == Some(segment) {
            return;
        }
        if let Some(previous) = self.segment.replace(segment) {
            if !self.dir.join(segment_name(previous)).exists() {
                // Retention removed it whole.
                self.pending.clear();
                return;
            }
            let entries = std::mem::take(&mut self.pending);
            if let Err(e) = write_sidecar(&self.dir, previous, &entries) {
                // Not fatal: without it the segment is read at the next open.
                tracing::warn!(error = %e, segment = previous, "cannot write a segment's dedupe sidecar");
            }
        }
    }

    /// Adds a keyed record of the current segment.
    pub fn insert(&mut self, entry: KeyEntry) {
        self.pending.push(entry);
        self.add(entry);
    }

    /// Adds an entry to the maps only (records of closed segments, at open).
    fn add(&mut self, entry: KeyEntry) {
        let number = entry.arrival / self.span;
        // Arrival times grow with sequence numbers; a clock set back joins the newest
        // partition, which lives at least as long. A full partition is followed by
        // another of the same time.
        let newest = self.partitions.back();
        if newest.is_none_or(|p| p.number < number || p.map.len() >= PARTITION_KEYS) {
            self.partitions.push_back(Partition {
                number,
                map: DigestMap::default(),
            });
        }
        if let Some(p) = self.partitions.back_mut() {
            p.map.insert(entry.digest, entry.seq);
        }
    }

    /// Drops the partitions whose every entry was first seen before `cutoff`; returns
    /// how many entries went.
    pub fn expire(&mut self, cutoff: u64) -> usize {
        let mut removed = 0;
        while let Some(p) = self.partitions.front() {
            if (p.number + 1).saturating_mul(self.span) > cutoff {
                break;
            }
            removed += p.map.len();
            self.partitions.pop_front();
        }
        removed
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.partitions.iter().map(|p| p.map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.partitions.iter().all(|p| p.map.is_empty())
    }

    /// Loads a closed segment's entries from `from` on: from its sidecar when it has a
    /// good one, else from `read` (the segment's frames), writing the sidecar then.
    pub fn load_closed(
        &mut self,
        segment: u64,
        from: u64,
        read: impl FnOnce() -> std::io::Result<Vec<KeyEntry>>,
    ) -> std::io::Result<()> {
        let entries = match read_sidecar(&self.dir, segment) {
            Some(entries) => entries,
            None => {
                let entries = read()?;
                if let Err(e) = write_sidecar(&self.dir, segment, &entries) {
                    tracing::warn!(error = %e, segment, "cannot write a segment's dedupe sidecar");
                }
                entries
            }
        };
        for e in entries.into_iter().filter(|e| e.seq >= from) {
            self.add(e);
        }
        Ok(())
    }

    /// Loads the segment being written (read from its frames): its entries from `from`
    /// on go into the maps, and all of them into the pending sidecar.
    pub fn load_active(&mut self, segment: u64, from: u64, entries: Vec<KeyEntry>) {
        for e in &entries {
            if e.seq >= from {
                self.add(*e);
            }
        }
        self.segment = Some(segment);
        self.pending = entries;
    }
}

fn write_sidecar(dir: &Path, segment: u64, entries: &[KeyEntry]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(16 + entries.len() * ENTRY + 4);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&(entries.len() as u64).to_be_bytes());
    for e in entries {
        buf.extend_from_slice(&e.seq.to_be_bytes());
        buf.extend_from_slice(&e.digest.to_be_bytes());
        buf.extend_from_slice(&e.arrival.to_be_bytes());
    }
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_be_bytes());
    std::fs::write(sidecar_path(dir, segment), buf)
}

/// A sidecar's entries; `None` when it is missing or does not check out.
fn read_sidecar(dir: &Path, segment: u64) -> Option<Vec<KeyEntry>> {
    let buf = std::fs::read(sidecar_path(dir, segment)).ok()?;
    if buf.len() < 20 || &buf[..8] != MAGIC {
        return None;
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    if crc32fast::hash(body).to_be_bytes() != crc {
        return None;
    }
    let u64_at = |i: usize| u64::from_be_bytes(body[i..i + 8].try_into().unwrap_or_default());
    let count = usize::try_from(u64_at(8)).ok()?;
    if body.len() != 16 + count.checked_mul(ENTRY)? {
        return None;
    }
    Some(
        (0..count)
            .map(|i| {
                let at = 16 + i * ENTRY;
                KeyEntry {
                    seq: u64_at(at),
                    digest: u64_at(at + 8),
                    arrival: u64_at(at + 16),
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    /// An empty segment file, so that its sidecar is written when it closes.
    fn touch(dir: &Path, first: u64) {
        std::fs::write(dir.join(format!("{first:020}")), b"").unwrap();
    }

    fn entry(key: &str, seq: u64, arrival: u64) -> KeyEntry {
        KeyEntry {
            seq,
            digest: digest(key.as_bytes()),
            arrival,
        }
    }

    #[test]
    fn the_newest_entry_for_a_key_comes_first_and_expiry_drops_whole_partitions() {
        let dir = tempfile::tempdir().unwrap();
        // A 80 s window: 10 s partitions.
        let mut index = DedupeIndex::new(dir.path(), 80 * S);
        index.enter_segment(1);
        index.insert(entry("a", 1, 100 * S));
        index.insert(entry("b", 2, 105 * S));
        index.insert(entry("a", 3, 125 * S));
        let a: Vec<u64> = index.candidates(digest(b"a")).collect();
        assert_eq!(a, [3, 1]);
        assert_eq!(index.candidates(digest(b"c")).count(), 0);
        // The partition [100 s, 110 s) goes only once the cutoff passes its end.
        assert_eq!(index.expire(109 * S), 0);
        assert_eq!(index.expire(110 * S), 2);
        assert_eq!(index.candidates(digest(b"a")).collect::<Vec<_>>(), [3]);
        assert_eq!(index.candidates(digest(b"b")).count(), 0);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn a_full_partition_is_followed_by_another_of_the_same_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = DedupeIndex::new(dir.path(), 80 * S);
        let n = PARTITION_KEYS as u64 + 10;
        for seq in 1..=n {
            index.add(entry(&seq.to_string(), seq, 100 * S));
        }
        assert_eq!(index.partitions.len(), 2);
        assert_eq!(index.partitions[0].map.len(), PARTITION_KEYS);
        // Every key is still found, and both go when their time is over.
        assert_eq!(index.candidates(digest(b"1")).collect::<Vec<_>>(), [1]);
        assert_eq!(
            index.candidates(digest(n.to_string().as_bytes())).count(),
            1
        );
        assert_eq!(index.expire(110 * S), n as usize);
    }

    #[test]
    fn a_closed_segment_leaves_a_sidecar_that_loads_instead_of_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), 1);
        let mut index = DedupeIndex::new(dir.path(), 80 * S);
        index.enter_segment(1);
        index.insert(entry("a", 1, 100 * S));
        index.enter_segment(2);
        assert!(sidecar_path(dir.path(), 1).exists());

        let mut again = DedupeIndex::new(dir.path(), 80 * S);
        again
            .load_closed(1, 0, || {
                panic!("the sidecar is good; the segment is not read")
            })
            .unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again.candidates(digest(b"a")).collect::<Vec<_>>(), [1]);

        // A torn sidecar is not trusted: the segment is read, and the sidecar rewritten.
        let path = sidecar_path(dir.path(), 1);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let mut third = DedupeIndex::new(dir.path(), 80 * S);
        third
            .load_closed(1, 0, || {
                Ok(vec![entry("a", 1, 100 * S), entry("z", 2, 100 * S)])
            })
            .unwrap();
        assert_eq!(third.len(), 2);
        assert_eq!(read_sidecar(dir.path(), 1).unwrap().len(), 2);
    }

    #[test]
    fn loading_skips_entries_before_the_first_sequence_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), 7);
        let mut index = DedupeIndex::new(dir.path(), 80 * S);
        index.load_active(7, 8, vec![entry("a", 7, 100 * S), entry("b", 8, 100 * S)]);
        assert_eq!(index.candidates(digest(b"a")).count(), 0);
        assert_eq!(index.candidates(digest(b"b")).collect::<Vec<_>>(), [8]);
        // Both are in the segment's sidecar when it closes.
        index.enter_segment(9);
        assert_eq!(read_sidecar(dir.path(), 7).unwrap().len(), 2);
    }

    #[test]
    fn digests_are_stable_and_spread() {
        // Stored in sidecars: a change here would make every sidecar wrong.
        assert_eq!(digest(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(digest(b"/s\na"), 0x7ba0_37fc_e065_5240);
        assert_ne!(digest(b"/s\na"), digest(b"/s\nb"));
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000 {
            assert!(seen.insert(digest(format!("/source\n{i}").as_bytes())));
        }
    }
}
