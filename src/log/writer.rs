//! The group-commit writer: one loop, on a thread of its own, takes the appends of all
//! requests, writes each group with one backend call (per broker one segment write and
//! one sync), and only then answers every request in the group. While a group syncs,
//! the next one gathers in the queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::embedded::{AppendRequest, BlockingStore, SpaceLimits, WriterOptions};
use super::fresh::Fresh;
use super::{AppendOutcome, GroupEntry, LogError, LogRecord};
use crate::clock::SharedClock;
use crate::metrics::Metrics;

/// How often routing and delivery progress is synced.
pub const PROGRESS_SYNC: Duration = Duration::from_millis(100);

fn statvfs(path: &std::path::Path) -> std::io::Result<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs(3) with a NUL-terminated path and a zeroed struct it fills in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// Free bytes for unprivileged writers on the filesystem holding `path`.
pub fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let st = statvfs(path)?;
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// The size of the filesystem holding `path`, in bytes.
pub fn total_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let st = statvfs(path)?;
    Ok((st.f_blocks as u64).saturating_mul(st.f_frsize as u64))
}

/// Why appends must wait when `free` bytes are left and `storage.minFreeBytes` is
/// `min` (zero: never). One message for the writer's refusals and for `/readyz`.
pub(super) fn short_of_space(free: u64, min: u64) -> Option<String> {
    (free < min).then(|| {
        format!("the disk holding the log has {free} bytes free, less than storage.minFreeBytes ({min})")
    })
}

/// How often the free space is read while it is well above the minimum.
const FREE_SPACE_EVERY: Duration = Duration::from_millis(100);

/// The free space last read, and what the writer appended since: asking the
/// filesystem before every group cost a system call per group.
#[derive(Default)]
struct FreeSpace {
    read: Option<(std::time::Instant, u64)>,
    written: u64,
}

impl FreeSpace {
    /// The free bytes: read again every [`FREE_SPACE_EVERY`], and before every group
    /// once less than twice `min` is left; in between, the last reading less what was
    /// appended since.
    fn free(&mut self, path: &std::path::Path, min: u64) -> std::io::Result<u64> {
        if let Some((at, free)) = self.read {
            let left = free.saturating_sub(self.written);
            if at.elapsed() < FREE_SPACE_EVERY && left >= min.saturating_mul(2) {
                return Ok(left);
            }
        }
        let free = free_bytes(path)?;
        self.read = Some((std::time::Instant::now(), free));
        self.written = 0;
        Ok(free)
    }
}

/// Why appends must wait, if they must: too little free disk, or the quota reached.
fn space_refusal(
    backend: &dyn BlockingStore,
    limits: &SpaceLimits,
    free_space: &mut FreeSpace,
    brokers: impl Iterator<Item = Arc<str>>,
) -> Option<String> {
    if let (Some(path), min @ 1..) = (&limits.path, limits.min_free_bytes) {
        match free_space.free(path, min) {
            Ok(free) => {
                if let Some(reason) = short_of_space(free, min) {
                    return Some(reason);
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the free space"),
        }
    }
    quota_refusal(backend, limits, brokers)
}

/// Why appends must wait for the hard quota (`onMaxBytes: refuseWrites`), if they must.
pub(super) fn quota_refusal(
    backend: &dyn BlockingStore,
    limits: &SpaceLimits,
    brokers: impl Iterator<Item = Arc<str>>,
) -> Option<String> {
    let quota = limits.quota_bytes?;
    let stored: u64 = brokers
        .filter_map(|b| backend.stored(&b).ok())
        .map(|s| s.bytes)
        .sum();
    (stored >= quota).then(|| {
        format!("the log holds {stored} bytes, at storage.retention.maxBytes ({quota}) with onMaxBytes: refuseWrites")
    })
}

/// Records stored since the heads' watchers (the routers) were last woken.
const ANNOUNCE_RECORDS: usize = 256;
/// How long records may wait for the heads' watchers to be woken.
const ANNOUNCE_AFTER: Duration = Duration::from_millis(1);

/// When the routers hear of new records. Waking a router is a wake-up of its thread
/// (a system call here, a context switch there), and under a load that keeps the queue
/// full it came after every group of a few requests. So the writer wakes the heads'
/// watchers once the queue is empty (a light load pays no delay), or once
/// [`ANNOUNCE_RECORDS`] are waiting, or when the oldest would wait past
/// [`ANNOUNCE_AFTER`] by the end of the next group's write (taken to last as long as
/// the last one's: groups that take a millisecond to sync are announced each, as
/// before). The heads' values move with every group.
#[derive(Default)]
struct Announce {
    /// Brokers whose head moved since their watchers were last woken.
    brokers: Vec<Arc<str>>,
    records: usize,
    since: Option<std::time::Instant>,
    /// How long the last group took to write.
    last_write: Duration,
}

impl Announce {
    fn held(&mut self, broker: &Arc<str>, records: usize) {
        if !self.brokers.contains(broker) {
            self.brokers.push(broker.clone());
        }
        self.records += records;
        self.since.get_or_insert_with(std::time::Instant::now);
    }

    fn due(&self) -> bool {
        self.records >= ANNOUNCE_RECORDS
            || self
                .since
                .is_some_and(|t| t.elapsed() + self.last_write >= ANNOUNCE_AFTER)
    }

    /// Wakes the watchers of every head that moved since the last time.
    fn send(&mut self, heads: &HashMap<Arc<str>, watch::Sender<u64>>) {
        for broker in self.brokers.drain(..) {
            if let Some(head) = heads.get(&broker) {
                head.send_modify(|_| {});
            }
        }
        self.records = 0;
        self.since = None;
    }
}

/// What the writer tells the rest of the broker after each group.
pub(super) struct Outputs {
    /// Per broker, the head (the highest stored sequence).
    pub heads: Arc<HashMap<Arc<str>, watch::Sender<u64>>>,
    /// Per broker, the records just stored, decoded, for the router.
    pub fresh: Arc<HashMap<Arc<str>, Fresh>>,
    /// The error of the last group write, cleared by the next one that succeeds.
    pub failure: Arc<std::sync::Mutex<Option<String>>>,
}

pub(super) async fn run(
    backend: Arc<dyn BlockingStore>,
    mut rx: mpsc::Receiver<AppendRequest>,
    outputs: Outputs,
    clock: SharedClock,
    options: WriterOptions,
    shutdown: CancellationToken,
) {
    let Outputs {
        heads,
        fresh,
        failure,
    } = outputs;
    let metrics: Option<Arc<Metrics>> = options.metrics.clone();
    let window = u64::try_from(options.dedupe_window.as_nanos()).unwrap_or(u64::MAX);
    // Expired dedupe entries are dropped a tenth of a window apart (at least every second).
    let mut sweep = tokio::time::interval((options.dedupe_window / 10).max(Duration::from_secs(1)));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Routing and lane progress (written by routers and deliverers, who never flush)
    // and the segments' index files are made durable here every 100 ms, in one sync
    // for all of them. The sync runs beside the writes, never in their way, and comes
    // first in the select: under a steady load the queue is never empty, and progress
    // never synced would grow the lane journal's buffer in memory.
    let mut progress = tokio::time::interval(PROGRESS_SYNC);
    let mut syncing: Option<tokio::task::JoinHandle<()>> = None;
    let mut sync_again = false;
    let mut sweeping: Option<tokio::task::JoinHandle<()>> = None;
    // Set at shutdown: a sweep under way stops between two keys instead of holding the
    // shutdown for seconds (the next start goes on from there).
    let sweep_stop = Arc::new(AtomicBool::new(false));
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = false;
    // Whether the last group was refused for space, to log changes only.
    let mut refusing = false;
    // What the space check needs, taken once: the limits and every broker's name.
    let space = (
        options.space.clone(),
        heads.keys().cloned().collect::<Vec<Arc<str>>>(),
    );
    let mut free_space = FreeSpace::default();
    let mut announce = Announce::default();
    loop {
        // Before the writer may wait: whatever is stored is announced.
        if rx.is_empty() || announce.due() {
            announce.send(&heads);
        }
        let first = tokio::select! {
            biased;
            _ = progress.tick() => {
                // A tick while the last sync still runs is not lost: the next sync
                // starts as soon as that one ends.
                if syncing.is_some() {
                    sync_again = true;
                } else {
                    syncing = Some(spawn_progress_sync(backend.clone()));
                }
                continue;
            }
            _ = async { syncing.as_mut().expect("guarded by the condition").await }, if syncing.is_some() => {
                syncing = std::mem::take(&mut sync_again).then(|| spawn_progress_sync(backend.clone()));
                continue;
            }
            r = rx.recv() => match r {
                Some(r) => r,
                None => break,
            },
            _ = shutdown.cancelled(), if !closing => {
                // Take no new requests; write the ones already queued, then stop.
                rx.close();
                closing = true;
                sweep_stop.store(true, Ordering::Relaxed);
                continue;
            }
            _ = sweep.tick(), if window > 0 && !closing => {
                // Beside the writes, not in their way (a backend may keep its keys on
                // disk; the embedded store's are in memory). One sweep at a time; a tick
                // during one is skipped.
                if sweeping.as_ref().is_none_or(|h| h.is_finished()) {
                    let cutoff = clock.now_unix_nanos().saturating_sub(window);
                    let (b, stop) = (backend.clone(), sweep_stop.clone());
                    sweeping = Some(tokio::task::spawn_blocking(move || match b.expire_dedupe(cutoff, &stop) {
                        Ok(n) if n > 0 => tracing::debug!(expired = n, "dedupe entries expired"),
                        Err(e) => tracing::warn!(error = %e, "dedupe expiry failed"),
                        _ => {}
                    }));
                }
                continue;
            }
        };
        let mut requests = vec![first];
        while requests.len() < options.max_group_requests {
            match rx.try_recv() {
                Ok(r) => requests.push(r),
                Err(_) => break,
            }
        }
        let (group, replies): (Vec<GroupEntry>, Vec<_>) =
            requests.into_iter().map(|r| (r.entry, r.reply)).unzip();
        let brokers: Vec<Arc<str>> = group.iter().map(|e| e.broker.clone()).collect();
        let now = clock.now_unix_nanos();
        let group_started = std::time::Instant::now();
        if let Some(m) = &metrics {
            m.log_group_size.observe(group.len() as f64);
        }
        // This loop has a thread of its own (`runtime::spawn_thread`): the space check
        // and the write run in place, without a hop to the blocking pool and back.
        let result = match space_refusal(
            &*backend,
            &space.0,
            &mut free_space,
            space.1.iter().cloned(),
        ) {
            Some(reason) => Err(LogError::Full(reason)),
            None => backend.write_group(&group, now),
        };
        announce.last_write = group_started.elapsed();
        // Counted only where the free space is watched.
        if result.is_ok() && space.0.min_free_bytes > 0 {
            free_space.written += group
                .iter()
                .flat_map(|e| &e.appends)
                .map(|a| a.record.len() as u64)
                .sum::<u64>();
        }
        // Refused for want of space: nothing was written, and the log is not failing.
        let result = match result {
            Err(refused @ LogError::Full(_)) => {
                if !refusing {
                    tracing::warn!(reason = %refused, "appends refused for want of space; answering 503 until there is room");
                    refusing = true;
                }
                let e = Arc::new(refused);
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
                continue;
            }
            other => other,
        };
        if std::mem::take(&mut refusing) {
            tracing::info!("there is room again; appends resume");
        }
        *failure.lock().unwrap_or_else(|p| p.into_inner()) =
            result.as_ref().err().map(ToString::to_string);
        match result {
            Ok(outcomes) => {
                if let Some(m) = &metrics {
                    m.log_sync_duration
                        .observe(announce.last_write.as_secs_f64());
                    for (entry, outcomes) in group.iter().zip(&outcomes) {
                        let stored = outcomes
                            .iter()
                            .filter(|o| matches!(o, AppendOutcome::Stored(_)))
                            .count();
                        m.log_appended
                            .with_label_values(&[&*entry.broker])
                            .inc_by(stored as u64);
                    }
                }
                // The decoded events to the routers, before the heads move and wake them.
                for (entry, outcomes) in group.into_iter().zip(&outcomes) {
                    let Some(fresh) = fresh.get(&entry.broker) else {
                        continue;
                    };
                    let broker = entry.broker.clone();
                    fresh.push(entry.appends.into_iter().zip(outcomes).filter_map(
                        |(append, outcome)| match (append.decoded, outcome) {
                            (Some(d), AppendOutcome::Stored(seq)) => Some((
                                LogRecord {
                                    seq: *seq,
                                    broker: broker.clone(),
                                    arrival_unix_nanos: d.arrival_unix_nanos,
                                    hops: d.hops,
                                    event: d.event,
                                },
                                append.record.len(),
                            )),
                            _ => None,
                        },
                    ));
                }
                for (broker, outcomes) in brokers.iter().zip(&outcomes) {
                    let stored = outcomes.iter().filter_map(|o| match o {
                        AppendOutcome::Stored(s) => Some(*s),
                        AppendOutcome::Duplicate(_) => None,
                    });
                    let (n, max) = stored.fold((0, 0), |(n, m), s| (n + 1, m.max(s)));
                    if let (1.., Some(head)) = (n, heads.get(broker)) {
                        // The head moves at once (readers of `Log::head` see it); the
                        // wake-up of its watchers may wait (`Announce`).
                        head.send_if_modified(|h| {
                            *h = (*h).max(max);
                            false
                        });
                        announce.held(broker, n);
                    }
                }
                for (reply, outcomes) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcomes));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "log write failed; answering the group with 503");
                let e = Arc::new(e);
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
    announce.send(&heads);
    sweep_stop.store(true, Ordering::Relaxed);
    for h in [syncing, sweeping].into_iter().flatten() {
        let _ = h.await;
    }
    let b = backend.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || b.sync()).await {
        tracing::error!(error = %e, "final log sync failed");
    }
}

/// Makes routing and lane progress and the log's index durable, on a blocking thread.
fn spawn_progress_sync(backend: Arc<dyn BlockingStore>) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_blocking(move || {
        if let Err(e) = backend.sync_progress() {
            tracing::warn!(error = %e, "syncing routing and delivery progress failed");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_wait_only_while_less_than_the_minimum_is_free() {
        let table = [
            (0, 0, false),
            (5, 0, false),
            (9, 10, true),
            (10, 10, false),
            (11, 10, false),
            (0, u64::MAX, true),
        ];
        for (free, min, short) in table {
            let reason = short_of_space(free, min);
            assert_eq!(reason.is_some(), short, "{free} free, {min} minimum");
            if let Some(r) = reason {
                assert!(r.contains("storage.minFreeBytes"), "{r}");
            }
        }
    }

    #[test]
    fn watchers_are_woken_once_enough_records_or_time_have_gathered() {
        let broker: Arc<str> = "default".into();
        let heads = HashMap::from([(broker.clone(), watch::Sender::new(0u64))]);
        let mut rx = heads[&broker].subscribe();
        let mut announce = Announce::default();
        announce.send(&heads);
        assert!(!rx.has_changed().unwrap(), "nothing held, nobody woken");
        announce.held(&broker, 8);
        assert!(!announce.due(), "8 records, just now");
        announce.held(&broker, ANNOUNCE_RECORDS - 8);
        assert!(announce.due(), "a router batch of records");
        announce.send(&heads);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        assert!(!announce.due());
        announce.held(&broker, 1);
        std::thread::sleep(ANNOUNCE_AFTER);
        assert!(announce.due(), "one record that has waited long enough");
        announce.send(&heads);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        // Groups that take as long to write as records may wait: each is announced.
        announce.last_write = ANNOUNCE_AFTER;
        announce.held(&broker, 1);
        assert!(announce.due(), "the next write would hold it too long");
    }

    #[test]
    fn free_space_is_read_again_when_what_was_written_may_have_used_it_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut space = FreeSpace::default();
        let first = space.free(dir.path(), 1).unwrap();
        assert!(first > 10_000, "a test machine has some room");
        // Between readings: the last one less what the writer appended since.
        space.written = 10_000;
        assert_eq!(space.free(dir.path(), 1).unwrap(), first - 10_000);
        // Less than twice the minimum left by that count: the filesystem is asked.
        space.written = first;
        let again = space.free(dir.path(), 1).unwrap();
        assert!(again > 0, "read from the filesystem, not estimated at 0");
        assert_eq!(space.written, 0, "counted from the new reading");
    }
}
