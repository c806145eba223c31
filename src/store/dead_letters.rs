//! The dead letters of every broker, in sled 0.34.7 (tree `deadletters`, id → JSON
//! [`DeadLetter`]); the one part of the store that uses sled.
//!
//! With `fsync` durability a letter is synced before `store` returns: it is the last
//! record of an event. sled's `flush` writes its buffers with `sync_file_range`, which
//! does not sync file metadata, and it writes large values to `blobs/` without syncing
//! them at all, so after each flush the `db` file, every blob file written since the
//! last sync and the `blobs` directory are `fdatasync`ed too. Only one caller flushes at
//! a time: concurrent flushes can deadlock in sled 0.34 (sled #1308).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::{DeadLetter, Durability, StoreError};

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> StoreError {
        match e {
            sled::Error::Io(io) => StoreError::Io(io),
            other => StoreError::DeadLetters(other.to_string()),
        }
    }
}

/// The dead-letter store.
pub struct DeadLetters {
    db: sled::Db,
    tree: sled::Tree,
    /// Letters kept, counted at open and after each change.
    total: AtomicU64,
    durability: Durability,
    /// sled's data file, synced after each flush (with `fsync`).
    data_file: Option<File>,
    blobs_dir: PathBuf,
    /// The highest blob file id already synced.
    synced_blob: Mutex<u64>,
    flush_lock: Mutex<()>,
    /// Written to since the last flush.
    dirty: AtomicBool,
}

impl DeadLetters {
    /// Opens (or creates) the store in `dir`; `cache_capacity` bounds sled's page cache.
    pub fn open(
        dir: &Path,
        cache_capacity: u64,
        durability: Durability,
    ) -> Result<DeadLetters, StoreError> {
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_capacity)
            .flush_every_ms(None)
            .open()?;
        let tree = db.open_tree("deadletters")?;
        let data_file = match durability {
            Durability::Fsync => Some(File::open(dir.join("db"))?),
            Durability::Relaxed => None,
        };
        let blobs_dir = dir.join("blobs");
        Ok(DeadLetters {
            total: AtomicU64::new(tree.len() as u64),
            synced_blob: Mutex::new(max_blob_id(&blobs_dir)),
            db,
            tree,
            durability,
            data_file,
            blobs_dir,
            flush_lock: Mutex::new(()),
            dirty: AtomicBool::new(false),
        })
    }

    /// Keeps a letter; returns its id (ids grow with time).
    pub fn store(&self, letter: &DeadLetter) -> Result<u64, StoreError> {
        let id = self.db.generate_id()?;
        let json = serde_json::to_vec(letter).map_err(std::io::Error::other)?;
        self.tree.insert(id.to_be_bytes(), json)?;
        self.total.fetch_add(1, Ordering::AcqRel);
        // With `relaxed`, the next progress sync flushes it.
        self.dirty.store(true, Ordering::Release);
        if self.durability == Durability::Fsync {
            self.flush()?;
        }
        Ok(id)
    }

    pub fn get(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        Ok(self
            .tree
            .get(id.to_be_bytes())?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Every letter, oldest first.
    pub fn list(&self) -> Result<Vec<(u64, DeadLetter)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.iter() {
            let (k, v) = item?;
            if let (Ok(id), Ok(letter)) = (<[u8; 8]>::try_from(&k[..]), serde_json::from_slice(&v))
            {
                out.push((u64::from_be_bytes(id), letter));
            }
        }
        Ok(out)
    }

    /// Removes a letter; `false` when there was none with that id.
    pub fn delete(&self, id: u64) -> Result<bool, StoreError> {
        let removed = self.tree.remove(id.to_be_bytes())?.is_some();
        if removed {
            self.total.fetch_sub(1, Ordering::AcqRel);
            self.dirty.store(true, Ordering::Release);
        }
        Ok(removed)
    }

    pub fn count(&self) -> u64 {
        self.total.load(Ordering::Acquire)
    }

    /// Deletes the oldest letters while more than `max_count` are kept, and those
    /// stored before `cutoff_unix_nanos`; returns how many.
    pub fn expire(&self, max_count: u64, cutoff_unix_nanos: u64) -> Result<usize, StoreError> {
        let mut excess = self.count().saturating_sub(max_count);
        let mut removed = 0;
        for item in self.tree.iter() {
            let (k, v) = item?;
            // Ids grow with time, so the first letter young enough ends the old ones.
            let old = serde_json::from_slice::<DeadLetter>(&v)
                .map_or(true, |l| l.time_unix_nanos < cutoff_unix_nanos);
            if excess == 0 && !old {
                break;
            }
            if self.tree.remove(&k)?.is_some() {
                self.total.fetch_sub(1, Ordering::AcqRel);
                self.dirty.store(true, Ordering::Release);
                removed += 1;
            }
            excess = excess.saturating_sub(1);
        }
        Ok(removed)
    }

    /// Flushes when written to since the last flush. A failed flush is tried again by
    /// the next call.
    pub fn flush_if_dirty(&self) -> Result<(), StoreError> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            self.flush()
                .inspect_err(|_| self.dirty.store(true, Ordering::Release))?;
        }
        Ok(())
    }

    /// Flushes sled, and with `fsync` syncs its files.
    pub fn flush(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.db.flush()?;
        if self.durability == Durability::Fsync {
            self.sync_files()?;
        }
        Ok(())
    }

    /// Bytes sled takes on disk.
    pub fn disk_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    /// Syncs the data file, new blob files and the blobs directory.
    fn sync_files(&self) -> Result<(), StoreError> {
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

fn max_blob_id(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()))
        .max()
        .unwrap_or(0)
}
