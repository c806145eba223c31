//! Event bodies in append-only segment files, one directory per broker.
//!
//! The segments are the log's write-ahead record: a group's events are appended to the
//! broker's active segment in one write and made durable with one `fdatasync`, and only
//! then indexed in sled (sequence → location). sled's index and counts are flushed in
//! the background; whatever of them a crash loses is rebuilt at open from
//! the segments' tail ([`Segments::scan`]). sled's own write path costs several device
//! round trips and a page copy per group, and its node splits grow with the values it
//! holds, so keeping bodies out of it is what lets ingest approach the disk's own rate
//! (docs/performance.md).
//!
//! A segment is named after the first sequence it holds (`00000000000000000001`) and
//! ends at about [`SEGMENT_BYTES`]; a closed one gets a dedupe sidecar beside it
//! (`<name>.keys`, [`super::dedupe_index`]), which goes when the segment goes. A frame
//! is
//!
//! ```text
//! u32 frame length | u32 CRC-32 of what follows | u64 sequence | u16 key length | dedupe key | record
//! ```
//!
//! all big-endian. A frame that does not check out is never returned: reads report it,
//! and a scan at open stops there and cuts the segment to what came before (a frame torn
//! by a crash was never acknowledged).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;

/// A segment is closed, and the next one started, once it holds this many bytes.
/// Retention frees disk a whole segment at a time, so this is also how far the disk can
/// trail the records retention keeps.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

const HEADER: usize = 18;

/// Where a record is: its segment, offset and frame length, and the record's own length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub segment: u64,
    pub offset: u64,
    pub frame_len: u32,
    pub record_len: u32,
}

impl Location {
    pub const ENCODED: usize = 24;

    pub fn encode(&self) -> [u8; Self::ENCODED] {
        let mut v = [0u8; Self::ENCODED];
        v[..8].copy_from_slice(&self.segment.to_be_bytes());
        v[8..16].copy_from_slice(&self.offset.to_be_bytes());
        v[16..20].copy_from_slice(&self.frame_len.to_be_bytes());
        v[20..].copy_from_slice(&self.record_len.to_be_bytes());
        v
    }

    pub fn decode(v: &[u8]) -> Option<Location> {
        if v.len() != Self::ENCODED {
            return None;
        }
        let u64_at = |i: usize| u64::from_be_bytes(v[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_be_bytes(v[i..i + 4].try_into().unwrap_or_default());
        Some(Location {
            segment: u64_at(0),
            offset: u64_at(8),
            frame_len: u32_at(16),
            record_len: u32_at(20),
        })
    }

    fn end(&self) -> u64 {
        self.offset + u64::from(self.frame_len)
    }
}

/// One record found by a scan.
pub struct Scanned {
    pub seq: u64,
    pub location: Location,
}

struct Active {
    first: u64,
    /// The sequence the next append takes.
    next: u64,
    file: Arc<File>,
    len: u64,
    /// Files written since the last sync (the active one, and one just closed), and
    /// whether a new file's directory entry still needs syncing.
    unsynced: Vec<Arc<File>>,
    dir_unsynced: bool,
}

/// One broker's segments.
pub struct Segments {
    dir: PathBuf,
    files: RwLock<BTreeMap<u64, Arc<File>>>,
    active: Mutex<Option<Active>>,
}

fn name(first: u64) -> String {
    format!("{first:020}")
}

fn open_rw(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

impl Segments {
    /// Opens the segments in `dir` (created when missing).
    pub fn open(dir: &Path) -> std::io::Result<Segments> {
        std::fs::create_dir_all(dir)?;
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let Some(first) = entry
                .file_name()
                .to_str()
                .filter(|n| n.len() == 20)
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            files.insert(first, Arc::new(open_rw(&entry.path())?));
        }
        // A dedupe sidecar outlives its segment only when retention removed the segment
        // as the sidecar was written: it goes now.
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(first) = file_name
                .to_str()
                .and_then(|n| n.strip_suffix(".keys"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if !files.contains_key(&first) {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(Segments {
            dir: dir.to_path_buf(),
            files: RwLock::new(files),
            active: Mutex::new(None),
        })
    }

    fn file(&self, segment: u64) -> Option<Arc<File>> {
        self.files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&segment)
            .cloned()
    }

    /// The first sequence of each segment, oldest first.
    pub fn firsts(&self) -> Vec<u64> {
        self.files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// Reads every whole frame from `from` on: in the segment that holds `after` (the
    /// location of the record before `next`), past it; or from the start of the segment
    /// that begins at `next`. Stops at the first frame that does not check out or does
    /// not carry the next sequence, and cuts that segment there; later segments, which
    /// can only hold unacknowledged writes then, are removed. Used at open, before any
    /// append.
    pub fn scan(&self, next: u64, after: Option<Location>) -> std::io::Result<Vec<Scanned>> {
        let mut out = Vec::new();
        let mut expect = next;
        let (mut segment, mut offset) = match after {
            Some(l) if self.file(l.segment).is_some() => (l.segment, l.end()),
            _ => (next, 0),
        };
        loop {
            let Some(file) = self.file(segment) else {
                break;
            };
            let len = file.metadata()?.len();
            let mut clean = true;
            while offset < len {
                match read_frame_at(&file, offset, len - offset)? {
                    Some((seq, _, record, frame_len)) if seq == expect => {
                        out.push(Scanned {
                            seq,
                            location: Location {
                                segment,
                                offset,
                                frame_len,
                                record_len: record.len() as u32,
                            },
                        });
                        offset += u64::from(frame_len);
                        expect += 1;
                    }
                    _ => {
                        tracing::warn!(
                            segment = %self.dir.join(name(segment)).display(),
                            offset,
                            dropped = len - offset,
                            "the log's last segment ends in an incomplete write (never acknowledged); it is cut there"
                        );
                        file.set_len(offset)?;
                        file.sync_all()?;
                        clean = false;
                        break;
                    }
                }
            }
            if !clean {
                self.remove_after(segment)?;
                break;
            }
            // Go on into the segment that starts where this one ended, if any.
            segment = expect;
            offset = 0;
        }
        Ok(out)
    }

    /// Removes the segments after `segment` (unacknowledged writes past a torn frame).
    fn remove_after(&self, segment: u64) -> std::io::Result<()> {
        let mut files = self.files.write().unwrap_or_else(|p| p.into_inner());
        let later: Vec<u64> = files.range(segment + 1..).map(|(k, _)| *k).collect();
        for first in later {
            files.remove(&first);
            std::fs::remove_file(self.dir.join(name(first)))?;
            remove_sidecar(&self.dir, first)?;
        }
        Ok(())
    }

    /// Appends one frame per record, in one write, and returns their locations. `next`
    /// is the first record's sequence; the records follow it in order.
    pub fn append(
        &self,
        next: u64,
        records: &[(Option<&[u8]>, &[u8])],
    ) -> std::io::Result<Vec<Location>> {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let needs_new = match &*active {
            None => true,
            Some(a) => a.len >= SEGMENT_BYTES,
        };
        if needs_new {
            self.start_segment(&mut active, next)?;
        }
        let Some(a) = active.as_mut() else {
            return Err(std::io::Error::other("no active segment"));
        };
        let total: usize = records
            .iter()
            .map(|(k, r)| HEADER + k.map_or(0, <[u8]>::len) + r.len())
            .sum();
        let mut buf = Vec::with_capacity(total);
        let mut locations = Vec::with_capacity(records.len());
        for (i, (key, record)) in records.iter().enumerate() {
            let offset = a.len + buf.len() as u64;
            let frame_len = put_frame(&mut buf, next + i as u64, *key, record)?;
            locations.push(Location {
                segment: a.first,
                offset,
                frame_len,
                record_len: record.len() as u32,
            });
        }
        a.file.write_all_at(&buf, a.len)?;
        a.len += buf.len() as u64;
        a.next = next + records.len() as u64;
        if !a.unsynced.iter().any(|f| Arc::ptr_eq(f, &a.file)) {
            a.unsynced.push(a.file.clone());
        }
        Ok(locations)
    }

    /// Continues the last segment if `next` follows on from it, else starts one at
    /// `next`.
    fn start_segment(&self, active: &mut Option<Active>, next: u64) -> std::io::Result<()> {
        let mut unsynced = active.take().map(|a| a.unsynced).unwrap_or_default();
        let last = self
            .files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .next_back()
            .map(|(k, f)| (*k, f.clone()));
        if let Some((first, file)) = last {
            let len = file.metadata()?.len();
            if len < SEGMENT_BYTES && first <= next {
                *active = Some(Active {
                    first,
                    next,
                    file,
                    len,
                    unsynced,
                    dir_unsynced: false,
                });
                return Ok(());
            }
        }
        let file = Arc::new(open_rw(&self.dir.join(name(next)))?);
        unsynced.push(file.clone());
        self.files
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(next, file.clone());
        *active = Some(Active {
            first: next,
            next,
            file,
            len: 0,
            unsynced,
            dir_unsynced: true,
        });
        Ok(())
    }

    /// Takes back an append that was not acknowledged: the active segment ends at
    /// `from` again.
    pub fn rewind(&self, from_seq: u64, from: Location) -> std::io::Result<()> {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = active.as_mut().filter(|a| a.first == from.segment) {
            a.file.set_len(from.offset)?;
            a.len = from.offset;
            a.next = a.next.min(from_seq);
        }
        Ok(())
    }

    /// Makes every append so far durable: `fdatasync` on each file written since the
    /// last sync, and on the directory when a segment was created.
    pub fn sync(&self) -> std::io::Result<()> {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let Some(a) = active.as_mut() else {
            return Ok(());
        };
        for f in a.unsynced.drain(..) {
            f.sync_data()?;
        }
        if a.dir_unsynced {
            File::open(&self.dir)?.sync_all()?;
            a.dir_unsynced = false;
        }
        Ok(())
    }

    /// Whether the segment holds the whole frame at `location` (else the write never
    /// reached the disk).
    pub fn reaches(&self, location: Location) -> bool {
        self.file(location.segment)
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| m.len() >= location.end())
    }

    /// The record at `location`, if its frame checks out and carries `seq`.
    pub fn read(&self, seq: u64, location: Location) -> std::io::Result<Option<Bytes>> {
        let Some(file) = self.file(location.segment) else {
            return Ok(None);
        };
        Ok(
            read_frame_at(&file, location.offset, u64::from(location.frame_len))?
                .filter(|(s, _, _, len)| *s == seq && *len == location.frame_len)
                .map(|(_, _, record, _)| record),
        )
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
        Ok(
            read_frame_at(&file, location.offset, u64::from(location.frame_len))?
                .filter(|(s, _, _, len)| *s == seq && *len == location.frame_len)
                .map(|(_, key, record, _)| (key, record)),
        )
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
            if (frame_len as usize) < HEADER || end > buf.len() {
                break;
            }
            let frame = &buf[at..end];
            let crc = u32::from_be_bytes(frame[4..8].try_into().unwrap_or_default());
            let (seq, key_len) = seq_and_key_len(frame);
            if crc32fast::hash(&frame[8..]) != crc || HEADER + key_len > frame.len() {
                break;
            }
            let key = (key_len > 0).then(|| frame[HEADER..HEADER + key_len].to_vec());
            out.push((seq, key, buf.slice(at + HEADER + key_len..end)));
            at = end;
        }
        Ok(out)
    }

    /// Removes the segments whose records all come before `first_kept` (the segment
    /// after them starts at or before it). The newest segment stays unless it is the
    /// one being appended to and all its records are gone too.
    pub fn remove_before(&self, first_kept: u64) -> std::io::Result<u64> {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let mut files = self.files.write().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = active.as_ref().filter(|a| a.next <= first_kept) {
            // Everything written is gone: the next append starts a new segment, and
            // the loop below removes this one with the rest.
            for f in &a.unsynced {
                f.sync_data()?;
            }
            let next = a.next;
            *active = None;
            files.insert(next, Arc::new(open_rw(&self.dir.join(name(next)))?));
        }
        let firsts: Vec<u64> = files.keys().copied().collect();
        let mut removed = 0;
        for pair in firsts.windows(2) {
            if pair[1] <= first_kept {
                files.remove(&pair[0]);
                std::fs::remove_file(self.dir.join(name(pair[0])))?;
                remove_sidecar(&self.dir, pair[0])?;
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

    /// Bytes on disk: the segments and their dedupe sidecars.
    pub fn disk_bytes(&self) -> u64 {
        self.files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(first, f)| {
                let sidecar =
                    std::fs::metadata(super::dedupe_index::sidecar_path(&self.dir, *first));
                f.metadata().map_or(0, |m| m.len()) + sidecar.map_or(0, |m| m.len())
            })
            .sum()
    }
}

/// Removes a segment's dedupe sidecar ([`super::dedupe_index`]), if it has one.
fn remove_sidecar(dir: &Path, first: u64) -> std::io::Result<()> {
    match std::fs::remove_file(super::dedupe_index::sidecar_path(dir, first)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn put_frame(
    buf: &mut Vec<u8>,
    seq: u64,
    key: Option<&[u8]>,
    record: &[u8],
) -> std::io::Result<u32> {
    let key = key.unwrap_or_default();
    let key_len = u16::try_from(key.len())
        .map_err(|_| std::io::Error::other("a dedupe key longer than 64 KiB"))?;
    let frame_len = u32::try_from(HEADER + key.len() + record.len())
        .map_err(|_| std::io::Error::other("a record over 4 GiB"))?;
    let start = buf.len();
    buf.extend_from_slice(&frame_len.to_be_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&key_len.to_be_bytes());
    buf.extend_from_slice(key);
    buf.extend_from_slice(record);
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
    Ok(frame_len)
}

type Frame = (u64, Option<Vec<u8>>, Bytes, u32);

/// A frame's sequence, dedupe key and record.
pub type FrameContent = (u64, Option<Vec<u8>>, Bytes);

/// The sequence and the key length of a frame that starts with at least a header.
fn seq_and_key_len(frame: &[u8]) -> (u64, usize) {
    let seq = u64::from_be_bytes(frame[8..16].try_into().unwrap_or_default());
    (seq, usize::from(u16::from_be_bytes([frame[16], frame[17]])))
}

/// The frame at `offset`, at most `room` bytes long; `None` when it is short, torn or
/// fails its checksum.
fn read_frame_at(file: &File, offset: u64, room: u64) -> std::io::Result<Option<Frame>> {
    if room < HEADER as u64 {
        return Ok(None);
    }
    let mut head = [0u8; 4];
    file.read_exact_at(&mut head, offset)?;
    let frame_len = u32::from_be_bytes(head);
    if (frame_len as usize) < HEADER || u64::from(frame_len) > room {
        return Ok(None);
    }
    let mut buf = vec![0u8; frame_len as usize];
    file.read_exact_at(&mut buf, offset)?;
    let crc = u32::from_be_bytes(buf[4..8].try_into().unwrap_or_default());
    if crc32fast::hash(&buf[8..]) != crc {
        return Ok(None);
    }
    let (seq, key_len) = seq_and_key_len(&buf);
    if HEADER + key_len > buf.len() {
        return Ok(None);
    }
    let key = (key_len > 0).then(|| buf[HEADER..HEADER + key_len].to_vec());
    let record = Bytes::from(buf).slice(HEADER + key_len..);
    Ok(Some((seq, key, record, frame_len)))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // The wrong sequence for a location reads nothing.
        assert_eq!(s.read(3, locs[1]).unwrap(), None);
        // Half a frame after the third, as a crash mid-write leaves it.
        let path = dir.path().join(name(1));
        let mut torn = Vec::new();
        put_frame(&mut torn, 4, None, b"four").unwrap();
        let f = OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut &f, &torn[..torn.len() / 2]).unwrap();
        drop(s);

        let s = Segments::open(dir.path()).unwrap();
        let found = s.scan(2, Some(locs[0])).unwrap();
        let seqs: Vec<u64> = found.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, [2, 3]);
        assert_eq!(found[1].location, locs[2]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), locs[2].end());
        // Appends go on after the cut.
        let l4 = s.append(4, &[(Some(b"k4"), b"four")]).unwrap();
        assert_eq!(l4[0].offset, locs[2].end());
        let again = s.scan(4, Some(locs[2])).unwrap();
        assert_eq!(again[0].location, l4[0]);
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
    fn a_flipped_bit_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segments::open(dir.path()).unwrap();
        let locs = s.append(1, &[(None, b"abcdef")]).unwrap();
        let path = dir.path().join(name(1));
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
        assert!(!dir.path().join(name(1)).exists());
        // Once every record is gone, so is the segment being appended to; the next
        // append starts a new one.
        assert_eq!(s.remove_before(3).unwrap(), 0);
        assert_eq!(s.remove_before(4).unwrap(), 1);
        assert_eq!(s.firsts(), [4]);
        let l = s.append(4, &[(None, b"d")]).unwrap();
        assert_eq!((l[0].segment, l[0].offset), (4, 0));
        assert_eq!(s.read(4, l[0]).unwrap().as_deref(), Some(&b"d"[..]));
    }
}
