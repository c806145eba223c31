//! Paused lanes of the embedded backend, in one small file (`paused.json` in the storage
//! folder): written whole to a temporary file, synced, and renamed over the old one on
//! every change, so a pause survives a crash or a restart. Pauses are few and rare.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::StoreError;

const FILE: &str = "paused.json";

/// One paused lane.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
struct Paused {
    broker: String,
    subscription: String,
    sink: String,
}

/// The paused lanes, in memory and on disk.
pub struct Pauses {
    path: PathBuf,
    set: Mutex<BTreeSet<Paused>>,
}

impl Pauses {
    /// Reads `dir/paused.json` (none: nothing is paused).
    pub fn open(dir: &Path) -> Result<Pauses, StoreError> {
        let path = dir.join(FILE);
        let set = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Vec<Paused>>(&bytes)
                .map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} is not a list of paused lanes: {e}", path.display()),
                    )
                })?
                .into_iter()
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(e.into()),
        };
        Ok(Pauses {
            path,
            set: Mutex::new(set),
        })
    }

    /// The paused lanes of `broker`: `(subscription, sink)`.
    pub fn list(&self, broker: &str) -> Vec<(String, String)> {
        let set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        set.iter()
            .filter(|p| p.broker == broker)
            .map(|p| (p.subscription.clone(), p.sink.clone()))
            .collect()
    }

    /// Pauses or resumes a lane, durably before it returns.
    pub fn set(
        &self,
        broker: &str,
        subscription: &str,
        sink: &str,
        paused: bool,
    ) -> Result<(), StoreError> {
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        let entry = Paused {
            broker: broker.to_string(),
            subscription: subscription.to_string(),
            sink: sink.to_string(),
        };
        let changed = if paused {
            set.insert(entry.clone())
        } else {
            set.remove(&entry)
        };
        if !changed {
            return Ok(());
        }
        if let Err(e) = self.write(&set) {
            // What is in memory stays what is on disk.
            if paused {
                set.remove(&entry);
            } else {
                set.insert(entry);
            }
            return Err(e);
        }
        Ok(())
    }

    fn write(&self, set: &BTreeSet<Paused>) -> Result<(), StoreError> {
        let list: Vec<&Paused> = set.iter().collect();
        let bytes = serde_json::to_vec_pretty(&list).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_survive_a_reopen_and_resumes_too() {
        let dir = tempfile::tempdir().unwrap();
        let p = Pauses::open(dir.path()).unwrap();
        assert!(p.list("default").is_empty());
        p.set("default", "s", "http://a/", true).unwrap();
        p.set("default", "s", "http://b/", true).unwrap();
        p.set("ci", "s", "http://a/", true).unwrap();
        p.set("default", "s", "http://b/", false).unwrap();
        let p = Pauses::open(dir.path()).unwrap();
        assert_eq!(
            p.list("default"),
            [("s".to_string(), "http://a/".to_string())]
        );
        assert_eq!(p.list("ci").len(), 1);
    }

    #[test]
    fn a_damaged_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "{").unwrap();
        let e = Pauses::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("paused.json"), "{e}");
    }
}
