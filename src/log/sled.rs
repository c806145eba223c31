//! The embedded backend: segment files for the events, a journal for the lanes, sled
//! 0.34.7 for the rest.
//!
//! Event bodies and their index live in segment files beside sled
//! (`segments/<broker>/`, see [`super::segments`]): a group is appended there and
//! synced, which is what makes it durable, and no store takes a write per event. The
//! dedupe index is in memory, rebuilt at open from the segments ([`super::dedupe_index`]).
//! Lane entries, parked retries, the router's cursor and the subscriptions' routing
//! states are in memory too, kept by an append-only journal (`lanes.journal`, see
//! [`super::lanes`]) that is written and synced with the progress every 100 ms: routing
//! and delivery take no sled write either.
//!
//! sled holds `stats/<broker>` (`first`: the lowest sequence retention kept) and the
//! dead letters of every broker (`deadletters`, id → JSON). Trees of earlier versions
//! are dropped at open: `events/<broker>` (the index) and `dedupe/<broker>` are rebuilt
//! from the segments, and `lanes/`, `parked/` and `meta/<broker>` are read into the
//! journal when there is none yet.
//!
//! Counts that metrics and retention read often (stored events and bytes, the dead
//! letters) are kept in memory, updated after each write; the stored events and bytes
//! are counted from the segment index at open, the dead letters from their tree.
//!
//! Durability (`fsync`): a group is acknowledged once its segment write is synced; the
//! segment's index file is synced in the background (every 100 ms), and what a crash
//! takes of it is rebuilt from the frames at open. sled is flushed with the progress
//! when retention or a dead letter wrote to it. sled's `flush` writes its buffers with
//! `sync_file_range`, which does not sync file metadata, and it writes large values to
//! `blobs/` without syncing them at all. So after each flush the backend also `fdatasync`s the `db` file, every
//! blob file written since the last sync, and the `blobs` directory. Only one caller
//! flushes at a time (concurrent flushes deadlock in 0.34, sled #1308): progress syncs
//! and the rare dead-letter sync share one lock.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use sled::Tree;

use super::dedupe_index::{self, DedupeIndex, KeyEntry};
use super::lanes::{self, LaneStore};
use super::segments::{Location, Segments};
use super::{
    AppendOutcome, Damage, Expired, GroupEntry, LaneId, LogBackend, LogError, LogRecord, Stored,
};

/// How the log makes appends durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every group is flushed and synced before any of its requests is answered.
    Fsync,
    /// sled flushes in the background every 500 ms; a crash can lose what was
    /// acknowledged in the last half second.
    Relaxed,
}

/// Settings of the sled backend.
#[derive(Debug, Clone)]
pub struct SledOptions {
    pub path: PathBuf,
    pub durability: Durability,
    /// sled's page cache in bytes; bounds the process's memory.
    pub cache_capacity: u64,
    pub dedupe_window_nanos: u64,
}

struct BrokerTrees {
    /// The dedupe keys inside the window; the writer holds it for a group.
    keys: Mutex<DedupeIndex>,
    /// `first` → the lowest sequence retention kept.
    stats: Tree,
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

/// The stats key of the lowest sequence retention kept (big-endian u64).
const FIRST: &[u8] = b"first";

/// The sled backend.
pub struct SledLog {
    db: sled::Db,
    brokers: HashMap<String, BrokerTrees>,
    durability: Durability,
    dedupe_window_nanos: u64,
    data_file: Option<File>,
    blobs_dir: PathBuf,
    /// The highest blob file id already synced.
    synced_blob: Mutex<u64>,
    /// Dead letters, all brokers: id → JSON `DeadLetter`.
    dead_letters: Tree,
    /// One flush at a time: concurrent flushes can deadlock in sled 0.34 (sled #1308).
    flush_lock: Mutex<()>,
    /// Whether sled was written to (retention's mark, dead letters) since its last flush.
    sled_dirty: AtomicBool,
    /// Lane entries and routing state.
    lanes: LaneStore,
    dead_letter_total: AtomicU64,
    /// Damage found: records that do not decode (skipped when read), and records lost
    /// before the last start (the head below its mark).
    damage: Mutex<HashMap<String, Damage>>,
    /// Records already reported corrupt, so each is logged once.
    corrupt_seen: Mutex<std::collections::HashSet<(String, u64)>>,
    /// Where the head marks live, the heads last written there, and when.
    marks: Mutex<Marks>,
}

impl Drop for SledLog {
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

/// The file beside sled's own that holds each broker's head, rewritten at most every
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

impl SledLog {
    /// Opens (or creates) the log in `options.path` with a tree set per broker.
    pub fn open(options: &SledOptions, brokers: &[String]) -> Result<SledLog, LogError> {
        std::fs::create_dir_all(&options.path)?;
        let config = sled::Config::new()
            .path(&options.path)
            .cache_capacity(options.cache_capacity)
            .flush_every_ms(None);
        let db = config.open()?;
        let mut trees = HashMap::new();
        // Lane entries and routing state of an earlier version, kept in sled trees: read
        // into the lane journal when there is none yet, then dropped.
        let import_lanes = !LaneStore::exists(&options.path);
        let mut import = lanes::Import::default();
        let names = db.tree_names();
        for b in brokers {
            let stats = db.open_tree(format!("stats/{b}"))?;
            // The dedupe trees of earlier versions; the index is rebuilt from the frames.
            db.drop_tree(format!("dedupe/{b}"))?;
            db.drop_tree(format!("dedupe-expiry/{b}"))?;
            // The segments index themselves (an earlier version's segments without index
            // files are read whole, once).
            let segments = Segments::open(&options.path.join("segments").join(b))?;
            let head = segments.head();
            // The lowest record kept: retention's mark, or in a log of an earlier
            // version the first key of its index tree, which goes now.
            let kept = match stats.get(FIRST)? {
                Some(v) => seq_of(&v),
                None => db
                    .open_tree(format!("events/{b}"))?
                    .first()?
                    .map_or(0, |(k, _)| seq_of(&k)),
            };
            let first = kept.max(segments.first_seq().unwrap_or(head + 1));
            stats.insert(FIRST, &first.to_be_bytes())?;
            db.drop_tree(format!("events/{b}"))?;
            for old in [&b"counts"[..], b"tail", b"swept"] {
                stats.remove(old)?;
            }
            let count = (head + 1).saturating_sub(first);
            let bytes = segments.record_bytes(first, head);
            if import_lanes {
                import_old_lanes(&db, &names, b, &mut import)?;
            }
            trees.insert(
                b.clone(),
                BrokerTrees {
                    keys: Mutex::new(DedupeIndex::new(
                        segments.dir(),
                        options.dedupe_window_nanos,
                    )),
                    segments,
                    stats,
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
        let lanes = LaneStore::open(&options.path, import_lanes.then_some(import))
            .map_err(|e| LogError::Io(std::io::Error::other(e)))?;
        // The journal holds them now (or held them already).
        for name in &names {
            if [&b"lanes/"[..], b"parked/", b"meta/"]
                .iter()
                .any(|p| name.starts_with(p))
            {
                db.drop_tree(name)?;
            }
        }
        let data_file = match options.durability {
            Durability::Fsync => Some(File::open(options.path.join("db"))?),
            Durability::Relaxed => None,
        };
        let blobs_dir = options.path.join("blobs");
        let synced_blob = Mutex::new(max_blob_id(&blobs_dir)?);
        let dead_letters = db.open_tree("deadletters")?;
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
        Ok(SledLog {
            damage: Mutex::new(damage),
            corrupt_seen: Mutex::default(),
            marks: Mutex::new(Marks {
                path: marks_path,
                heads,
                written: std::time::Instant::now(),
            }),
            dead_letter_total: AtomicU64::new(dead_letters.len() as u64),
            lanes,
            dead_letters,
            flush_lock: Mutex::new(()),
            sled_dirty: AtomicBool::new(false),
            db,
            brokers: trees,
            durability: options.durability,
            dedupe_window_nanos: options.dedupe_window_nanos,
            data_file,
            blobs_dir,
            synced_blob,
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

    fn trees(&self, broker: &str) -> Result<&BrokerTrees, LogError> {
        self.brokers
            .get(broker)
            .ok_or_else(|| LogError::UnknownBroker(broker.to_string()))
    }

    /// Writes the entries of one broker (all of a group's entries for it); returns each
    /// entry's outcomes. The records and their index entries go to the segment files,
    /// and the records are synced; sled takes no write (docs/performance.md, item 14).
    /// The counts and the dedupe index are in memory, the head is published last.
    fn write_broker(
        &self,
        broker: &str,
        entries: &[&GroupEntry],
        now: u64,
    ) -> Result<Vec<Vec<AppendOutcome>>, LogError> {
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
    ) -> Result<Option<u64>, LogError> {
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
            let first_seen = super::record::decode(seq, record).map_or(0, |r| r.arrival_unix_nanos);
            // An older entry for the key was first seen earlier still.
            let fresh = now.saturating_sub(first_seen) < self.dedupe_window_nanos;
            return Ok(fresh.then_some(seq));
        }
        Ok(None)
    }

    /// Flushes sled, and with `fsync` syncs its files.
    fn flush_sled(&self) -> Result<(), LogError> {
        let _one_at_a_time = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.db.flush()?;
        if self.durability == Durability::Fsync {
            self.sync_files()?;
        }
        Ok(())
    }

    /// Syncs the data file, new blob files and the blobs directory.
    fn sync_files(&self) -> Result<(), LogError> {
        if let Some(f) = &self.data_file {
            f.sync_data()?;
        }
        let mut synced = self.synced_blob.lock().unwrap_or_else(|p| p.into_inner());
        let mut newest = *synced;
        if let Ok(dir) = std::fs::read_dir(&self.blobs_dir) {
            for entry in dir.flatten() {
                let Some(id) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                if id > *synced {
                    // A blob can be removed by sled's GC between listing and opening.
                    if let Ok(f) = File::open(entry.path()) {
                        f.sync_data()?;
                    }
                    newest = newest.max(id);
                }
            }
            if newest > *synced {
                File::open(&self.blobs_dir)?.sync_all()?;
            }
        }
        *synced = newest;
        Ok(())
    }
}

/// Reads broker `b`'s lane entries and routing state from the sled trees of an
/// earlier version (`lanes/`, `parked/`, `meta/`).
fn import_old_lanes(
    db: &sled::Db,
    names: &[sled::IVec],
    b: &str,
    import: &mut lanes::Import,
) -> Result<(), LogError> {
    let tree = |name: String| -> Result<Option<Tree>, LogError> {
        Ok(if names.iter().any(|n| n == name.as_bytes()) {
            Some(db.open_tree(name)?)
        } else {
            None
        })
    };
    if let Some(t) = tree(format!("lanes/{b}"))? {
        for item in t.iter() {
            let (k, v) = item?;
            if let Some(prefix) = lane_prefix_of(&k) {
                let seq = seq_of(&k[prefix.len()..]);
                import
                    .pending
                    .push((b.to_string(), prefix.to_vec(), seq, attempts_of(&v)));
            }
        }
    }
    if let Some(t) = tree(format!("parked/{b}"))? {
        for item in t.iter() {
            let (k, v) = item?;
            if let Some(prefix) = lane_prefix_of(&k) {
                let rest = &k[prefix.len()..];
                if rest.len() == 16 {
                    import.parked.push((
                        b.to_string(),
                        prefix.to_vec(),
                        seq_of(&rest[..8]),
                        seq_of(&rest[8..]),
                        attempts_of(&v),
                    ));
                }
            }
        }
    }
    if let Some(t) = tree(format!("meta/{b}"))? {
        for item in t.iter() {
            let (k, v) = item?;
            if &k[..] == b"cursor" {
                import.cursors.push((b.to_string(), seq_of(&v)));
            } else if let Some(name) = k.strip_prefix(b"sub/") {
                import.subscriptions.push((
                    b.to_string(),
                    String::from_utf8_lossy(name).into_owned(),
                    v.to_vec(),
                ));
            }
        }
    }
    Ok(())
}

/// The lane part (`subscription \0 sink \0`) of a lanes or parked key.
fn lane_prefix_of(key: &[u8]) -> Option<&[u8]> {
    let first = key.iter().position(|&b| b == 0)?;
    let second = first + 1 + key[first + 1..].iter().position(|&b| b == 0)?;
    Some(&key[..=second])
}

fn max_blob_id(dir: &Path) -> Result<u64, LogError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    Ok(entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()))
        .max()
        .unwrap_or(0))
}

fn seq_of(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[8 - n..].copy_from_slice(&key[key.len() - n..]);
    u64::from_be_bytes(b)
}

/// A lane entry's or parked entry's attempt count (empty: none yet).
fn attempts_of(v: &[u8]) -> u32 {
    match v {
        [a, b, c, d, ..] => u32::from_be_bytes([*a, *b, *c, *d]),
        _ => 0,
    }
}

/// The record at `location`; `None` when its frame or its encoding is damaged.
fn read_record(
    trees: &BrokerTrees,
    seq: u64,
    location: Location,
) -> Result<Option<LogRecord>, LogError> {
    Ok(trees
        .segments
        .read(seq, location)?
        .and_then(|bytes| super::record::decode(seq, bytes)))
}

/// The first sequence that arrived at or after `unix_nanos` (the head + 1 if none).
/// Arrival times grow with sequence numbers (one writer stamps them in order), so a
/// binary search over the sequence finds it.
fn seq_at_time_in(trees: &BrokerTrees, unix_nanos: u64) -> Result<u64, LogError> {
    let head = trees.head.load(Ordering::Acquire);
    let arrival = |seq: u64| -> Result<Option<u64>, LogError> {
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
fn load_keys(trees: &BrokerTrees, window: u64) -> Result<(), LogError> {
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
                arrival: super::record::decode(seq, record).map_or(0, |r| r.arrival_unix_nanos),
            })
        })
        .collect())
}

impl LogBackend for SledLog {
    fn write_group(
        &self,
        group: &[GroupEntry],
        now: u64,
    ) -> Result<Vec<Vec<AppendOutcome>>, LogError> {
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

    fn read(&self, broker: &str, from: u64, limit: usize) -> Result<Vec<LogRecord>, LogError> {
        let trees = self.trees(broker)?;
        // Records are indexed before their sync; only those up to the head are stored.
        let head = trees.head.load(Ordering::Acquire);
        let from = from.max(trees.first.load(Ordering::Acquire));
        let mut locations = trees.segments.locations(from, limit);
        locations.retain(|(seq, _)| *seq <= head);
        let bodies = trees.segments.read_records(&locations)?;
        let mut out = Vec::with_capacity(locations.len());
        for ((seq, _), body) in locations.iter().zip(bodies) {
            match body.and_then(|b| super::record::decode(*seq, b)) {
                Some(record) => out.push(record),
                None => self.report_corrupt(broker, *seq),
            }
        }
        Ok(out)
    }

    fn head(&self, broker: &str) -> Result<u64, LogError> {
        Ok(self.trees(broker)?.head.load(Ordering::Acquire))
    }

    fn expire_dedupe(&self, cutoff: u64, _stop: &AtomicBool) -> Result<usize, LogError> {
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

    fn dedupe_entries(&self) -> usize {
        self.brokers
            .values()
            .map(|t| t.keys.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    fn router_cursor(&self, broker: &str) -> Result<u64, LogError> {
        self.trees(broker)?;
        Ok(self.lanes.cursor(broker))
    }

    fn record_routes(
        &self,
        broker: &str,
        entries: &[(super::LaneId, u64)],
        progress: &super::RouteProgress,
    ) -> Result<(), LogError> {
        self.trees(broker)?;
        self.lanes
            .record_routes(broker, entries, progress)
            .map_err(|e| LogError::Io(std::io::Error::other(e)))
    }

    fn subscription_states(
        &self,
        broker: &str,
    ) -> Result<Vec<(String, super::SubscriptionState)>, LogError> {
        self.trees(broker)?;
        let mut out = Vec::new();
        for (name, json) in self.lanes.subscription_states(broker) {
            match serde_json::from_slice::<super::SubscriptionState>(&json) {
                Ok(state) => out.push((name, state)),
                Err(e) => {
                    tracing::warn!(subscription = %name, error = %e, "unreadable subscription state; it will be reset")
                }
            }
        }
        Ok(out)
    }

    fn drop_lanes(
        &self,
        broker: &str,
        subscription: &str,
        sinks: Option<&[String]>,
    ) -> Result<usize, LogError> {
        self.trees(broker)?;
        Ok(self.lanes.drop_lanes(broker, subscription, sinks))
    }

    fn lane_entries(
        &self,
        broker: &str,
        lane: &super::LaneId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<super::LaneEntry>, LogError> {
        self.trees(broker)?;
        Ok(self.lanes.entries(broker, lane, from, limit))
    }

    fn finish(
        &self,
        broker: &str,
        lane: &super::LaneId,
        entries: &[super::LaneEntry],
    ) -> Result<(), LogError> {
        self.trees(broker)?;
        self.lanes.finish(broker, lane, entries);
        Ok(())
    }

    fn park(
        &self,
        broker: &str,
        lane: &super::LaneId,
        seq: u64,
        due: u64,
        attempts: u32,
    ) -> Result<(), LogError> {
        self.trees(broker)?;
        self.lanes.park(broker, lane, seq, due, attempts);
        Ok(())
    }

    fn unpark_due(
        &self,
        broker: &str,
        lane: &super::LaneId,
        now: u64,
    ) -> Result<(usize, Option<u64>), LogError> {
        self.trees(broker)?;
        Ok(self.lanes.unpark_due(broker, lane, now))
    }

    fn parked(&self, broker: &str, lane: &super::LaneId) -> Result<usize, LogError> {
        self.trees(broker)?;
        Ok(self.lanes.counts(broker, lane).1 as usize)
    }

    fn next_parked(&self, broker: &str, lane: &LaneId) -> Result<Option<u64>, LogError> {
        self.trees(broker)?;
        Ok(self.lanes.next_parked(broker, lane))
    }

    fn store_dead_letter(&self, letter: &super::DeadLetter) -> Result<u64, LogError> {
        let id = self.db.generate_id()?;
        let json =
            serde_json::to_vec(letter).map_err(|e| LogError::Io(std::io::Error::other(e)))?;
        self.dead_letters.insert(id.to_be_bytes(), json)?;
        self.dead_letter_total.fetch_add(1, Ordering::AcqRel);
        // With `relaxed`, the next progress sync flushes it, before the journal can hold
        // its entry's finish for long.
        self.sled_dirty.store(true, Ordering::Release);
        if self.durability == Durability::Fsync {
            // Dead letters are the last record of an event: make them as durable as appends.
            // `sync` takes the flush lock, so this never races the writer's flush.
            self.sync()?;
        }
        Ok(id)
    }

    fn dead_letter(&self, id: u64) -> Result<Option<super::DeadLetter>, LogError> {
        Ok(self
            .dead_letters
            .get(id.to_be_bytes())?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    fn delete_dead_letter(&self, id: u64) -> Result<bool, LogError> {
        let removed = self.dead_letters.remove(id.to_be_bytes())?.is_some();
        if removed {
            self.dead_letter_total.fetch_sub(1, Ordering::AcqRel);
            self.sled_dirty.store(true, Ordering::Release);
        }
        Ok(removed)
    }

    fn expire_dead_letters(&self, max_count: u64, cutoff: u64) -> Result<usize, LogError> {
        let mut excess = self
            .dead_letter_total
            .load(Ordering::Acquire)
            .saturating_sub(max_count);
        let mut removed = 0;
        for item in self.dead_letters.iter() {
            let (k, v) = item?;
            // Ids grow with time, so the first letter young enough ends the old ones.
            let old = serde_json::from_slice::<super::DeadLetter>(&v)
                .map_or(true, |l| l.time_unix_nanos < cutoff);
            if excess == 0 && !old {
                break;
            }
            if self.dead_letters.remove(&k)?.is_some() {
                self.dead_letter_total.fetch_sub(1, Ordering::AcqRel);
                removed += 1;
            }
            excess = excess.saturating_sub(1);
        }
        Ok(removed)
    }

    fn expire_events(
        &self,
        broker: &str,
        cutoff: u64,
        free_bytes: u64,
        limit: usize,
    ) -> Result<Expired, LogError> {
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
        // The mark goes to sled, flushed with the next progress sync; if a crash takes
        // it, the records it covers are deleted again.
        trees.stats.insert(FIRST, &first_kept.to_be_bytes())?;
        self.sled_dirty.store(true, Ordering::Release);
        trees.first.store(first_kept, Ordering::Release);
        trees.stored_events.store(count, Ordering::Release);
        trees.stored_bytes.store(bytes, Ordering::Release);
        drop(_counts);
        // Whole segments before the first record kept go (the newest one always stays).
        trees.segments.remove_before(first_kept)?;
        Ok(expired)
    }

    fn stored(&self, broker: &str) -> Result<Stored, LogError> {
        let trees = self.trees(broker)?;
        Ok(Stored {
            events: trees.stored_events.load(Ordering::Acquire),
            bytes: trees.stored_bytes.load(Ordering::Acquire),
        })
    }

    fn oldest_arrival(&self, broker: &str) -> Result<Option<u64>, LogError> {
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

    fn disk_bytes(&self) -> Result<u64, LogError> {
        let segments: u64 = self.brokers.values().map(|t| t.segments.disk_bytes()).sum();
        Ok(self.db.size_on_disk()? + segments + self.lanes.disk_bytes())
    }

    fn lane_depth(&self, broker: &str, lane: &LaneId) -> Result<u64, LogError> {
        self.trees(broker)?;
        let (pending, parked) = self.lanes.counts(broker, lane);
        Ok(pending + parked)
    }

    fn dead_letter_count(&self) -> Result<usize, LogError> {
        Ok(self.dead_letter_total.load(Ordering::Acquire) as usize)
    }

    fn dead_letters(&self) -> Result<Vec<(u64, super::DeadLetter)>, LogError> {
        let mut out = Vec::new();
        for item in self.dead_letters.iter() {
            let (k, v) = item?;
            if let Ok(letter) = serde_json::from_slice(&v) {
                out.push((seq_of(&k), letter));
            }
        }
        Ok(out)
    }

    fn seq_at_time(&self, broker: &str, unix_nanos: u64) -> Result<u64, LogError> {
        seq_at_time_in(self.trees(broker)?, unix_nanos)
    }

    fn sync_progress(&self) -> Result<(), LogError> {
        // The segments' index files every time (only appends make them dirty), the lane
        // journal when it changed, sled when retention or a dead letter wrote to it.
        for t in self.brokers.values() {
            if self.durability == Durability::Relaxed {
                t.segments.sync()?;
            }
            t.segments.sync_index()?;
        }
        // sled first when it was written to (retention, dead letters), with the lane
        // changes made before its flush: a lane's finish never outlives its dead letter.
        let dirty = self.sled_dirty.swap(false, Ordering::AcqRel);
        self.lanes
            .sync_after(|| if dirty { self.flush_sled() } else { Ok(()) })
            .inspect_err(|_| {
                if dirty {
                    self.sled_dirty.store(true, Ordering::Release);
                }
            })?;
        self.update_marks(false);
        Ok(())
    }

    fn damage(&self, broker: &str) -> Damage {
        self.damage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(broker)
            .copied()
            .unwrap_or_default()
    }

    fn sync(&self) -> Result<(), LogError> {
        for t in self.brokers.values() {
            t.segments.sync()?;
            t.segments.sync_index()?;
        }
        self.lanes.sync_after(|| self.flush_sled())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::event::{AttrValue, Event};
    use crate::log::Append;

    const T0: u64 = 1_767_225_600_000_000_000;

    fn append(log: &SledLog, key: &str) -> AppendOutcome {
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
                record: Bytes::from(super::super::record::encode("default", T0, 0, &event)),
                dedupe_key: Some(key.as_bytes().to_vec()),
                decoded: None,
            }],
        }];
        log.write_group(&group, T0).unwrap().remove(0).remove(0)
    }

    #[test]
    fn lanes_kept_in_sled_by_an_earlier_version_move_to_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let options = SledOptions {
            path: dir.path().to_path_buf(),
            durability: Durability::Fsync,
            cache_capacity: 8 << 20,
            dedupe_window_nanos: 0,
        };
        let lane = LaneId::new("sub", "http://sink");
        {
            // The trees as the earlier version wrote them.
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let key = |rest: &[u64]| {
                let mut k = lane.key_prefix();
                for r in rest {
                    k.extend_from_slice(&r.to_be_bytes());
                }
                k
            };
            let lanes = db.open_tree("lanes/default").unwrap();
            lanes.insert(key(&[7]), &[][..]).unwrap();
            lanes.insert(key(&[9]), &3u32.to_be_bytes()[..]).unwrap();
            let parked = db.open_tree("parked/default").unwrap();
            parked
                .insert(key(&[500, 8]), &2u32.to_be_bytes()[..])
                .unwrap();
            let meta = db.open_tree("meta/default").unwrap();
            meta.insert("cursor", &9u64.to_be_bytes()[..]).unwrap();
            meta.insert(
                "sub/sub",
                &br#"{"sinks":["http://sink"],"backfill":null}"#[..],
            )
            .unwrap();
            db.flush().unwrap();
        }
        let check = |log: &SledLog| {
            let entries = log.lane_entries("default", &lane, 0, 10).unwrap();
            let got: Vec<(u64, u32)> = entries.iter().map(|e| (e.seq, e.attempts)).collect();
            assert_eq!(got, [(7, 0), (9, 3)]);
            assert_eq!(log.next_parked("default", &lane).unwrap(), Some(8));
            assert_eq!(log.router_cursor("default").unwrap(), 9);
            assert_eq!(log.subscription_states("default").unwrap().len(), 1);
        };
        let log = SledLog::open(&options, &["default".to_string()]).unwrap();
        check(&log);
        let names = log.db.tree_names();
        assert!(!names.iter().any(|n| n.starts_with(b"lanes/")), "{names:?}");
        drop(log);
        // Opened again, the journal alone holds them.
        let log = SledLog::open(&options, &["default".to_string()]).unwrap();
        check(&log);
    }

    #[test]
    fn a_digest_that_names_a_record_of_another_key_makes_no_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let options = SledOptions {
            path: dir.path().to_path_buf(),
            durability: Durability::Fsync,
            cache_capacity: 8 << 20,
            dedupe_window_nanos: 60_000_000_000,
        };
        let log = SledLog::open(&options, &["default".to_string()]).unwrap();
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
