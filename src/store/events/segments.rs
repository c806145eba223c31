//! Event bodies in append-only segment files, one directory per broker, and the index
//! that finds them.
//!
//! The segments are the log: a group's events are appended to the broker's active
//! segment in one write and made durable with one `fdatasync`. Each segment has an
//! index file beside it (`<name>.idx`): per record, where its frame ends and the
//! record's length (two big-endian u32), written and synced in the
//! background (every 100 ms, and when the segment closes). The index is held in memory
//! too, 8 bytes a record, which is how a sequence number finds its record. No store
//! beside the files takes a write per event: a B-tree's write path (sled's) costs
//! several device round trips and a page copy per group and an insert per record,
//! far from the disk's own rate.
//!
//! At open each index file is checked (each frame must end after the one before it, and
//! inside the segment) and the frames past what it covers (written since its last sync)
//! are read and indexed again. Whatever a crash took from an index is rebuilt from the
//! frames, which carry their own sequence numbers and CRCs.
//!
//! A segment is named after the first sequence it holds (`00000000000000000001`) and
//! ends at about [`SEGMENT_BYTES`]; a closed one gets a dedupe sidecar beside it
//! (`<name>.keys`, [`super::dedupe_index`]), which goes when the segment goes. A
//! segment is a run of [`super::frames`]; a frame that does not check out is never
//! returned: reads report it, and the scan at open stops there and cuts the segment to
//! what came before (a frame torn by a crash was never acknowledged).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;

pub use super::frames::FrameContent;
use super::frames::{parse_frame, put_frame, read_frame_at, HEADER};
use super::index::{encode_slots_into, index_path, read_index, rewrite_index, Slot, SLOT};
use super::segment_name;

/// A segment is closed, and the next one started, once it holds this many bytes.
/// Retention frees disk a whole segment at a time, so this is also how far the disk can
/// trail the records retention keeps.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// Where a record is: its segment, offset and frame length, and the record's own length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub segment: u64,
    pub offset: u64,
    pub frame_len: u32,
    pub record_len: u32,
}

/// One segment: its file and its index.
struct Segment {
    file: Arc<File>,
    slots: Vec<Slot>,
}

impl Segment {
    fn location(&self, first: u64, i: usize) -> Option<Location> {
        let slot = self.slots.get(i)?;
        let start = if i == 0 { 0 } else { self.slots[i - 1].end };
        Some(Location {
            segment: first,
            offset: u64::from(start),
            frame_len: slot.end - start,
            record_len: slot.record_len,
        })
    }
}

struct Active {
    first: u64,
    file: Arc<File>,
    /// The segment's index file, how many entries the segment holds, and those not
    /// written to the file yet (from entry `index_written` on, encoded): they are
    /// written at the background sync and when the segment closes, not per group.
    index: Arc<File>,
    indexed: usize,
    index_pending: Vec<u8>,
    index_written: usize,
    len: u64,
    /// Files written since the last sync (the active one, and one just closed), and
    /// whether a new file's directory entry still needs syncing.
    unsynced: Vec<Arc<File>>,
    dir_unsynced: bool,
    index_unsynced: bool,
}

/// One broker's segments.
pub struct Segments {
    dir: PathBuf,
    segments: RwLock<BTreeMap<u64, Segment>>,
    active: Mutex<Option<Active>>,
    /// Held through a sync of the segments (of their indexes), so that a sync never
    /// returns while another one still syncs what it took: appends do not wait for it.
    syncing: Mutex<()>,
    syncing_index: Mutex<()>,
}

fn open_rw(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

impl Active {
    /// Writes the index entries appended since the last time to the index file.
    fn write_index(&mut self) -> std::io::Result<()> {
        if !self.index_pending.is_empty() {
            self.index
                .write_all_at(&self.index_pending, (self.index_written * SLOT) as u64)?;
            self.index_pending.clear();
            self.index_written = self.indexed;
        }
        Ok(())
    }
}

impl Segments {
    /// Opens the segments in `dir` (created when missing) and their indexes, indexing
    /// again the frames an index does not cover yet and cutting a segment at a frame
    /// torn by a crash.
    pub fn open(dir: &Path) -> std::io::Result<Segments> {
        std::fs::create_dir_all(dir)?;
        let mut firsts = Vec::new();
        let mut others = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(n) = file_name.to_str() else {
                continue;
            };
            match n.len() {
                20 => firsts.extend(n.parse::<u64>().ok()),
                _ => others.push((n.to_string(), entry.path())),
            }
        }
        firsts.sort_unstable();
        // An index or a dedupe sidecar outlives its segment only when retention removed
        // the segment as the other was written: it goes now.
        for (n, path) in others {
            let first = n
                .strip_suffix(".keys")
                .or_else(|| n.strip_suffix(".idx"))
                .and_then(|n| n.parse::<u64>().ok());
            if first.is_some_and(|f| firsts.binary_search(&f).is_err()) {
                std::fs::remove_file(path)?;
            }
        }
        let mut segments = BTreeMap::new();
        for first in firsts {
            let file = open_rw(&dir.join(segment_name(first)))?;
            segments.insert(first, Self::load(dir, first, file)?);
        }
        Ok(Segments {
            dir: dir.to_path_buf(),
            segments: RwLock::new(segments),
            active: Mutex::new(None),
            syncing: Mutex::new(()),
            syncing_index: Mutex::new(()),
        })
    }

    /// One segment's index at open: what its index file says, then the frames past it.
    fn load(dir: &Path, first: u64, file: File) -> std::io::Result<Segment> {
        let len = file.metadata()?.len();
        let on_file = std::fs::metadata(index_path(dir, first)).map_or(0, |m| m.len());
        let mut slots = read_index(dir, first, len);
        let checked = slots.len();
        if (checked * SLOT) as u64 != on_file {
            tracing::warn!(
                segment = %dir.join(segment_name(first)).display(),
                first = first + checked as u64,
                "index entries point past the end of the segment or do not check out (written without a sync before a power loss); the frames there are read instead"
            );
        }
        let mut offset = slots.last().map_or(0, |s| u64::from(s.end));
        let mut seq = first + checked as u64;
        while offset < len {
            match read_frame_at(&file, offset, len - offset)? {
                Some((s, _, record, frame_len))
                    if s == seq && offset + u64::from(frame_len) <= u64::from(u32::MAX) =>
                {
                    offset += u64::from(frame_len);
                    slots.push(Slot {
                        end: offset as u32,
                        record_len: record.len() as u32,
                    });
                    seq += 1;
                }
                _ => {
                    tracing::warn!(
                        segment = %dir.join(segment_name(first)).display(),
                        offset,
                        dropped = len - offset,
                        "the log's segment ends in an incomplete write (never acknowledged); it is cut there"
                    );
                    file.set_len(offset)?;
                    file.sync_all()?;
                    break;
                }
            }
        }
        if slots.len() > checked {
            tracing::info!(
                segment = %dir.join(segment_name(first)).display(),
                first = first + checked as u64,
                last = seq - 1,
                "records written to the segments after the index's last sync are indexed again"
            );
        }
        if slots.len() != checked || (slots.len() * SLOT) as u64 != on_file {
            rewrite_index(dir, first, &slots)?;
        }
        Ok(Segment {
            file: Arc::new(file),
            slots,
        })
    }

    fn file(&self, segment: u64) -> Option<Arc<File>> {
        self.segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&segment)
            .map(|s| s.file.clone())
    }

    /// The first sequence of each segment, oldest first.
    pub fn firsts(&self) -> Vec<u64> {
        self.segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// The last sequence indexed (0 when there is none).
    pub fn head(&self) -> u64 {
        let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
        segments
            .iter()
            .next_back()
            .map_or(0, |(first, s)| first + s.slots.len() as u64 - 1)
    }

    /// The ranges of sequences missing between one segment's last record and the next
    /// segment's first (a segment deleted, or cut short at open), as (first, last).
    pub fn gaps(&self) -> Vec<(u64, u64)> {
        let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
        let ends: Vec<(u64, u64)> = segments
            .iter()
            .map(|(first, s)| (*first, first + s.slots.len() as u64))
            .collect();
        ends.windows(2)
            .filter(|w| w[0].1 < w[1].0)
            .map(|w| (w[0].1, w[1].0 - 1))
            .collect()
    }

    /// The lowest sequence indexed, if any.
    pub fn first_seq(&self) -> Option<u64> {
        let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
        segments
            .iter()
            .find(|(_, s)| !s.slots.is_empty())
            .map(|(first, _)| *first)
    }

    /// Where record `seq` is, if it is indexed.
    pub fn locate(&self, seq: u64) -> Option<Location> {
        let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
        let (first, segment) = segments.range(..=seq).next_back()?;
        segment.location(*first, usize::try_from(seq - first).ok()?)
    }

    /// The locations of up to `limit` indexed records from `from` on, in order.
    pub fn locations(&self, from: u64, limit: usize) -> Vec<(u64, Location)> {
        let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
        let start = segments
            .range(..=from)
            .next_back()
            .map_or(from, |(first, _)| *first);
        let mut out = Vec::new();
        for (first, segment) in segments.range(start..) {
            let skip = usize::try_from(from.saturating_sub(*first)).unwrap_or(usize::MAX);
            for i in skip..segment.slots.len() {
                if out.len() == limit {
                    return out;
                }
                if let Some(l) = segment.location(*first, i) {
                    out.push((first + i as u64, l));
                }
            }
        }
        out
    }

    /// The record bytes of the indexed records from `from` through `to`.
    pub fn record_bytes(&self, from: u64, to: u64) -> u64 {
        let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
        let mut bytes = 0;
        for (first, segment) in segments.iter() {
            for (i, slot) in segment.slots.iter().enumerate() {
                let seq = first + i as u64;
                if (from..=to).contains(&seq) {
                    bytes += u64::from(slot.record_len);
                }
            }
        }
        bytes
    }

    /// Appends one frame per record, in one write, and their index entries, and returns
    /// their locations. `next` is the first record's sequence; the records follow it in
    /// order.
    pub fn append(
        &self,
        next: u64,
        records: &[(Option<&[u8]>, &[u8])],
    ) -> std::io::Result<Vec<Location>> {
        let total: u64 = records
            .iter()
            .map(|(k, r)| (HEADER + k.map_or(0, <[u8]>::len) + r.len()) as u64)
            .sum();
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        // Offsets are u32: a segment never grows past 4 GiB, whatever one group holds.
        let needs_new = match &*active {
            None => true,
            Some(a) => a.len >= SEGMENT_BYTES || a.len + total > u64::from(u32::MAX),
        };
        if needs_new {
            self.start_segment(&mut active, next)?;
        }
        let Some(a) = active.as_mut() else {
            return Err(std::io::Error::other("no active segment"));
        };
        if a.len + total > u64::from(u32::MAX) {
            return Err(std::io::Error::other("a group of records over 4 GiB"));
        }
        let mut buf = Vec::with_capacity(total as usize);
        let mut locations = Vec::with_capacity(records.len());
        let mut slots = Vec::with_capacity(records.len());
        for (i, (key, record)) in records.iter().enumerate() {
            let offset = a.len + buf.len() as u64;
            let frame_len = put_frame(&mut buf, next + i as u64, *key, record)?;
            let location = Location {
                segment: a.first,
                offset,
                frame_len,
                record_len: record.len() as u32,
            };
            slots.push(Slot {
                end: (offset + u64::from(frame_len)) as u32,
                record_len: location.record_len,
            });
            locations.push(location);
        }
        a.file.write_all_at(&buf, a.len)?;
        encode_slots_into(&slots, &mut a.index_pending);
        a.len += buf.len() as u64;
        a.indexed += slots.len();
        a.index_unsynced = true;
        if !a.unsynced.iter().any(|f| Arc::ptr_eq(f, &a.file)) {
            a.unsynced.push(a.file.clone());
        }
        if let Some(s) = self
            .segments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&a.first)
        {
            s.slots.extend(slots);
        }
        Ok(locations)
    }

    /// Continues the last segment if `next` follows on from it and it has room, else
    /// closes it (its index synced) and starts one at `next`.
    fn start_segment(&self, active: &mut Option<Active>, next: u64) -> std::io::Result<()> {
        let mut unsynced = Vec::new();
        if let Some(mut a) = active.take() {
            let closed = a.write_index().and_then(|()| a.index.sync_data());
            if let Err(e) = closed {
                *active = Some(a);
                return Err(e);
            }
            unsynced = a.unsynced;
        }
        let last = self
            .segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .next_back()
            .map(|(k, s)| (*k, s.file.clone(), s.slots.len()));
        if let Some((first, file, indexed)) = last {
            let len = file.metadata()?.len();
            if len < SEGMENT_BYTES && first + indexed as u64 == next {
                *active = Some(Active {
                    first,
                    file,
                    index: Arc::new(open_rw(&index_path(&self.dir, first))?),
                    indexed,
                    index_pending: Vec::new(),
                    index_written: indexed,
                    len,
                    unsynced,
                    dir_unsynced: false,
                    index_unsynced: false,
                });
                return Ok(());
            }
        }
        let file = self.create(next)?;
        unsynced.push(file.clone());
        *active = Some(Active {
            first: next,
            file,
            index: Arc::new(open_rw(&index_path(&self.dir, next))?),
            indexed: 0,
            index_pending: Vec::new(),
            index_written: 0,
            len: 0,
            unsynced,
            dir_unsynced: true,
            index_unsynced: false,
        });
        Ok(())
    }

    /// Creates an empty segment (and its empty index) starting at `first`.
    fn create(&self, first: u64) -> std::io::Result<Arc<File>> {
        let file = Arc::new(open_rw(&self.dir.join(segment_name(first)))?);
        File::create(index_path(&self.dir, first))?;
        self.segments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                first,
                Segment {
                    file: file.clone(),
                    slots: Vec::new(),
                },
            );
        Ok(file)
    }

    /// Takes back an append that was not acknowledged: the active segment and its index
    /// end before `from_seq` (at `from`) again.
    pub fn rewind(&self, from_seq: u64, from: Location) -> std::io::Result<()> {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = active.as_mut().filter(|a| a.first == from.segment) {
            let keep = usize::try_from(from_seq - a.first).unwrap_or(usize::MAX);
            a.file.set_len(from.offset)?;
            a.len = from.offset;
            if keep >= a.index_written {
                a.index_pending.truncate((keep - a.index_written) * SLOT);
            } else {
                a.index_pending.clear();
                a.index.set_len((keep * SLOT) as u64)?;
                a.index_written = keep;
            }
            a.indexed = a.indexed.min(keep);
            if let Some(s) = self
                .segments
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(&a.first)
            {
                s.slots.truncate(keep);
            }
        }
        Ok(())
    }

    /// Makes every append so far durable: `fdatasync` on each file written since the
    /// last sync, and on the directory when a segment was created. The syncs run
    /// without the appends' lock, so that appends go on meanwhile (with `relaxed`
    /// durability this is the background sync); what they miss is synced the next
    /// time, and what a failed sync was to cover stays to be synced.
    pub fn sync(&self) -> std::io::Result<()> {
        let _syncing = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        let (files, dir) = {
            let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            let Some(a) = active.as_mut() else {
                return Ok(());
            };
            (
                std::mem::take(&mut a.unsynced),
                std::mem::take(&mut a.dir_unsynced),
            )
        };
        let result = files
            .iter()
            .try_for_each(|f| f.sync_data())
            .and_then(|()| match dir {
                true => File::open(&self.dir)?.sync_all(),
                false => Ok(()),
            });
        if result.is_err() {
            let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(a) = active.as_mut() {
                for f in files {
                    if !a.unsynced.iter().any(|u| Arc::ptr_eq(u, &f)) {
                        a.unsynced.push(f);
                    }
                }
                a.dir_unsynced |= dir;
            }
        }
        result
    }

    /// Writes the active segment's new index entries and syncs its index (the
    /// background sync, without the lock; an index a crash cuts short is rebuilt from
    /// the frames at open).
    pub fn sync_index(&self) -> std::io::Result<()> {
        let _syncing = self.syncing_index.lock().unwrap_or_else(|p| p.into_inner());
        let (index, first) = {
            let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            let Some(a) = active.as_mut().filter(|a| a.index_unsynced) else {
                return Ok(());
            };
            a.write_index()?;
            a.index_unsynced = false;
            (a.index.clone(), a.first)
        };
        index.sync_data().inspect_err(|_| {
            let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(a) = active.as_mut().filter(|a| a.first == first) {
                a.index_unsynced = true;
            }
        })
    }

    /// The record at `location`, if its frame checks out and carries `seq`.
    pub fn read(&self, seq: u64, location: Location) -> std::io::Result<Option<Bytes>> {
        Ok(self.read_frame(seq, location)?.map(|(_, record)| record))
    }

    /// The dedupe key (if any) and the record at `location`, if the frame checks out and
    /// carries `seq`.
    pub fn read_frame(
        &self,
        seq: u64,
        location: Location,
    ) -> std::io::Result<Option<(Option<Vec<u8>>, Bytes)>> {
        let Some(file) = self.file(location.segment) else {
            return Ok(None);
        };
        // The index knows the frame's length: one read.
        let mut buf = vec![0u8; location.frame_len as usize];
        file.read_exact_at(&mut buf, location.offset)?;
        Ok(parse_frame(Bytes::from(buf))
            .filter(|(s, _, _, _)| *s == seq)
            .map(|(_, key, record, _)| (key, record)))
    }

    /// The records at `locations` (each with its sequence), in order; `None` for one
    /// whose frame does not check out. Frames that follow each other in a segment are
    /// read together, one `pread` a run of up to 256 KiB.
    pub fn read_records(
        &self,
        locations: &[(u64, Location)],
    ) -> std::io::Result<Vec<Option<Bytes>>> {
        let mut out = Vec::with_capacity(locations.len());
        let mut i = 0;
        while i < locations.len() {
            let start = locations[i].1;
            let mut end = start.offset + u64::from(start.frame_len);
            let mut j = i + 1;
            while let Some((_, l)) = locations.get(j) {
                let next_end = l.offset + u64::from(l.frame_len);
                if l.segment != start.segment
                    || l.offset != end
                    || next_end - start.offset > RUN_BYTES
                {
                    break;
                }
                end = next_end;
                j += 1;
            }
            let Some(file) = self.file(start.segment) else {
                out.extend((i..j).map(|_| None));
                i = j;
                continue;
            };
            let mut buf =
                vec![0u8; usize::try_from(end - start.offset).map_err(std::io::Error::other)?];
            file.read_exact_at(&mut buf, start.offset)?;
            let buf = Bytes::from(buf);
            for (seq, l) in &locations[i..j] {
                let at = (l.offset - start.offset) as usize;
                let frame = buf.slice(at..at + l.frame_len as usize);
                out.push(
                    parse_frame(frame)
                        .filter(|(s, _, _, _)| s == seq)
                        .map(|(_, _, record, _)| record),
                );
            }
            i = j;
        }
        Ok(out)
    }

    /// Every whole frame of the segment that starts at `first`, in one read: sequence,
    /// key and record. Stops at the first frame that does not check out. Read-only.
    pub fn frames(&self, first: u64) -> std::io::Result<Vec<FrameContent>> {
        let Some(file) = self.file(first) else {
            return Ok(Vec::new());
        };
        let len = file.metadata()?.len();
        let mut buf = vec![0u8; usize::try_from(len).map_err(std::io::Error::other)?];
        file.read_exact_at(&mut buf, 0)?;
        let buf = Bytes::from(buf);
        let mut out = Vec::new();
        let mut at = 0usize;
        while buf.len() - at >= HEADER {
            let frame_len = u32::from_be_bytes(buf[at..at + 4].try_into().unwrap_or_default());
            let end = at + frame_len as usize;
            let frame = (end <= buf.len()).then(|| parse_frame(buf.slice(at..end)));
            let Some(Some((seq, key, record, _))) = frame else {
                break;
            };
            out.push((seq, key, record));
            at = end;
        }
        Ok(out)
    }

    /// Removes the segments whose records all come before `first_kept` (the segment
    /// after them starts at or before it). The newest segment stays unless it is the
    /// one being appended to and all its records are gone too.
    pub fn remove_before(&self, first_kept: u64) -> std::io::Result<u64> {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let next = self.head() + 1;
        if next <= first_kept && self.first_seq().is_some() {
            // Everything written is gone: the next append starts a new segment, and
            // the loop below removes this one with the rest.
            if let Some(a) = active.take() {
                for f in &a.unsynced {
                    f.sync_data()?;
                }
            }
            self.create(next)?;
        }
        let mut segments = self.segments.write().unwrap_or_else(|p| p.into_inner());
        let firsts: Vec<u64> = segments.keys().copied().collect();
        let mut removed = 0;
        for pair in firsts.windows(2) {
            if pair[1] <= first_kept {
                segments.remove(&pair[0]);
                std::fs::remove_file(self.dir.join(segment_name(pair[0])))?;
                remove_if_there(&index_path(&self.dir, pair[0]))?;
                remove_if_there(&super::sidecar_path(&self.dir, pair[0]))?;
                removed += 1;
            }
        }
        if removed > 0 {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(removed)
    }

    /// The directory the segments are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes on disk: the segments, their indexes and their dedupe sidecars.
    pub fn disk_bytes(&self) -> u64 {
        let size = |p: PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
        self.segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(first, s)| {
                s.file.metadata().map_or(0, |m| m.len())
                    + size(index_path(&self.dir, *first))
                    + size(super::sidecar_path(&self.dir, *first))
            })
            .sum()
    }
}

/// Removes a file if it is there.
fn remove_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Frames read together are read in runs of at most this many bytes (a frame longer
/// than that is a run of its own): one `pread` for many records, while a record that
/// lives on (it shares its run's buffer) keeps little else alive.
const RUN_BYTES: u64 = 256 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn end(l: &Location) -> u64 {
        l.offset + u64::from(l.frame_len)
    }

    #[test]
    fn appended_records_read_back_and_a_torn_tail_is_cut_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segments::open(dir.path()).unwrap();
        let locs = s
            .append(
                1,
                &[(Some(b"k1"), b"one"), (None, b"two"), (None, b"three")],
            )
            .unwrap();
        s.sync().unwrap();
        assert_eq!(s.read(2, locs[1]).unwrap().as_deref(), Some(&b"two"[..]));
        assert_eq!(s.locate(2), Some(locs[1]));
        assert_eq!(s.head(), 3);
        // The wrong sequence for a location reads nothing.
        assert_eq!(s.read(3, locs[1]).unwrap(), None);
        // Half a frame after the third, as a crash mid-write leaves it.
        let path = dir.path().join(segment_name(1));
        let mut torn = Vec::new();
        put_frame(&mut torn, 4, None, b"four").unwrap();
        let f = OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut &f, &torn[..torn.len() / 2]).unwrap();
        drop(s);

        let s = Segments::open(dir.path()).unwrap();
        assert_eq!(s.head(), 3);
        assert_eq!(
            s.locations(1, 10).iter().map(|l| l.1).collect::<Vec<_>>(),
            locs
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), end(&locs[2]));
        // Appends go on after the cut.
        let l4 = s.append(4, &[(Some(b"k4"), b"four")]).unwrap();
        assert_eq!(l4[0].offset, end(&locs[2]));
        // Every frame of the segment, keys and records, in one read.
        let frames = s.frames(1).unwrap();
        let keys: Vec<Option<&[u8]>> = frames.iter().map(|f| f.1.as_deref()).collect();
        assert_eq!(keys, [Some(&b"k1"[..]), None, None, Some(&b"k4"[..])]);
        assert_eq!(frames[2].2, Bytes::from_static(b"three"));
        assert_eq!(
            s.read_frame(4, l4[0]).unwrap(),
            Some((Some(b"k4".to_vec()), Bytes::from_static(b"four")))
        );
    }

    #[test]
    fn frames_the_index_file_lacks_are_indexed_again_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segments::open(dir.path()).unwrap();
        let locs = s
            .append(1, &[(None, b"one"), (None, b"two"), (None, b"three")])
            .unwrap();
        s.sync_index().unwrap();
        drop(s);
        // The index loses its last entry and gets garbage instead, as a power loss
        // before its sync can leave it.
        let index = index_path(dir.path(), 1);
        let mut bytes = std::fs::read(&index).unwrap();
        bytes.truncate(2 * SLOT);
        bytes.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
        std::fs::write(&index, bytes).unwrap();

        let s = Segments::open(dir.path()).unwrap();
        assert_eq!(s.head(), 3);
        assert_eq!(s.locate(3), Some(locs[2]));
        assert_eq!(std::fs::metadata(&index).unwrap().len(), 3 * SLOT as u64);
        // An index that points past its segment's end (the segment lost writes): those
        // records are gone, and the index is cut to what the segment holds.
        let path = dir.path().join(segment_name(1));
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(locs[1].offset)
            .unwrap();
        drop(s);
        let s = Segments::open(dir.path()).unwrap();
        assert_eq!(s.head(), 1);
        assert_eq!(s.locate(2), None);
        assert_eq!(s.gaps(), []);
        assert_eq!(std::fs::metadata(&index).unwrap().len(), SLOT as u64);
        let l2 = s.append(2, &[(None, b"again")]).unwrap();
        assert_eq!(s.read(2, l2[0]).unwrap().as_deref(), Some(&b"again"[..]));
    }

    #[test]
    fn index_entries_are_written_at_the_background_sync_and_a_rewind_takes_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let index = index_path(dir.path(), 1);
        let size = || std::fs::metadata(&index).unwrap().len();
        let s = Segments::open(dir.path()).unwrap();
        s.append(1, &[(None, b"one"), (None, b"two")]).unwrap();
        assert_eq!(size(), 0, "not written per group");
        assert_eq!(s.head(), 2, "but indexed in memory at once");
        s.sync_index().unwrap();
        assert_eq!(size(), 2 * SLOT as u64);
        // A group written but not synced (its sync failed), taken back, then another.
        let taken = s
            .append(3, &[(None, b"lost"), (None, b"lost too")])
            .unwrap();
        s.rewind(3, taken[0]).unwrap();
        let l3 = s.append(3, &[(None, b"three")]).unwrap();
        s.sync_index().unwrap();
        assert_eq!(size(), 3 * SLOT as u64);
        // Taken back below what the file already holds: the file is cut too.
        s.rewind(3, l3[0]).unwrap();
        assert_eq!(size(), 2 * SLOT as u64);
        let l3 = s.append(3, &[(None, b"3")]).unwrap();
        s.sync().unwrap();
        s.sync_index().unwrap();
        drop(s);
        // What the file holds checks out at open: nothing is indexed again.
        let on_file = std::fs::read(&index).unwrap();
        let s = Segments::open(dir.path()).unwrap();
        assert_eq!(std::fs::read(&index).unwrap(), on_file);
        assert_eq!(s.head(), 3);
        assert_eq!(s.read(3, l3[0]).unwrap().as_deref(), Some(&b"3"[..]));
        assert_eq!(s.locate(3), Some(l3[0]));
    }

    #[test]
    fn records_read_together_come_back_in_order_and_a_damaged_one_alone_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segments::open(dir.path()).unwrap();
        // Small records and one bigger than a run, so that the reads split.
        let big = vec![9u8; RUN_BYTES as usize + 10];
        let records: Vec<Vec<u8>> = (0..50u8)
            .map(|i| if i == 20 { big.clone() } else { vec![i; 1000] })
            .collect();
        let appends: Vec<(Option<&[u8]>, &[u8])> =
            records.iter().map(|r| (None, r.as_slice())).collect();
        let locs = s.append(1, &appends).unwrap();
        // Damage record 31's last byte.
        let path = dir.path().join(segment_name(1));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let at = end(&locs[30]) - 1;
        let mut byte = [0u8];
        f.read_exact_at(&mut byte, at).unwrap();
        f.write_all_at(&[byte[0] ^ 1], at).unwrap();

        let wanted = s.locations(1, 50);
        let got = s.read_records(&wanted).unwrap();
        assert_eq!(got.len(), 50);
        for (i, body) in got.iter().enumerate() {
            match i {
                30 => assert_eq!(body, &None),
                _ => assert_eq!(
                    body.as_deref(),
                    Some(records[i].as_slice()),
                    "record {}",
                    i + 1
                ),
            }
        }
        // The wrong sequence for a location reads nothing.
        assert_eq!(s.read_records(&[(2, locs[0])]).unwrap(), [None]);
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segments::open(dir.path()).unwrap();
        let locs = s.append(1, &[(None, b"abcdef")]).unwrap();
        let path = dir.path().join(segment_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(s.read(1, locs[0]).unwrap(), None);
    }

    #[test]
    fn whole_segments_below_the_first_kept_record_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segments::open(dir.path()).unwrap();
        let big = vec![7u8; SEGMENT_BYTES as usize];
        s.append(1, &[(None, &big)]).unwrap();
        s.append(2, &[(None, b"b")]).unwrap();
        s.append(3, &[(None, b"c")]).unwrap();
        assert_eq!(s.firsts(), [1, 2]);
        assert_eq!(s.remove_before(2).unwrap(), 1);
        assert_eq!(s.firsts(), [2]);
        assert_eq!(s.gaps(), []);
        assert!(!dir.path().join(segment_name(1)).exists());
        // Once every record is gone, so is the segment being appended to; the next
        // append starts a new one.
        assert_eq!(s.remove_before(3).unwrap(), 0);
        assert_eq!(s.remove_before(4).unwrap(), 1);
        assert_eq!(s.firsts(), [4]);
        let l = s.append(4, &[(None, b"d")]).unwrap();
        assert_eq!((l[0].segment, l[0].offset), (4, 0));
        assert_eq!(s.read(4, l[0]).unwrap().as_deref(), Some(&b"d"[..]));
    }

    #[test]
    fn a_segment_missing_between_two_others_is_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segments::open(dir.path()).unwrap();
        let big = vec![7u8; SEGMENT_BYTES as usize];
        s.append(1, &[(None, &big)]).unwrap();
        s.append(2, &[(None, &big), (None, b"c")]).unwrap();
        s.append(4, &[(None, b"d")]).unwrap();
        assert_eq!(s.firsts(), [1, 2, 4]);
        drop(s);
        std::fs::remove_file(dir.path().join(segment_name(2))).unwrap();
        let s = Segments::open(dir.path()).unwrap();
        assert_eq!(s.gaps(), [(2, 3)]);
        assert_eq!(s.head(), 4);
        assert_eq!(s.locate(3), None);
        // Its index went with it (an index without its segment is removed at open).
        assert!(!index_path(dir.path(), 2).exists());
    }
}
