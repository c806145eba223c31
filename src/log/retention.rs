//! Retention: once a second, deletes events older than `maxAge`, then the oldest events
//! (across brokers, oldest first) while the stored records take more than `maxBytes`,
//! then dead letters beyond the store's own bounds. Deletions go in small chunks, so
//! that appends, which share the per-broker counts, never wait long behind them.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::embedded::{BlockingStore, Retention};
use super::{Expired, LogError};
use crate::clock::SharedClock;
use crate::metrics::Metrics;

/// How often the bounds are checked.
const EVERY: Duration = Duration::from_secs(1);

/// Events deleted per backend call.
const CHUNK: usize = 1000;

pub(super) async fn run(
    backend: Arc<dyn BlockingStore>,
    brokers: Vec<Arc<str>>,
    clock: SharedClock,
    bounds: Retention,
    metrics: Option<Arc<Metrics>>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let (b, names, now, bounds) = (
            backend.clone(),
            brokers.clone(),
            clock.now_unix_nanos(),
            bounds.clone(),
        );
        let pass = tokio::task::spawn_blocking(move || {
            let events = expire_events(b.as_ref(), &names, now, &bounds);
            let letters = b.expire_dead_letters(
                match bounds.dead_letters_max_count {
                    0 => u64::MAX,
                    n => n,
                },
                cutoff(now, bounds.dead_letters_max_age),
            );
            (events, letters)
        })
        .await;
        let Ok((events, letters)) = pass else {
            continue;
        };
        match events {
            Ok(deleted) => {
                for (broker, e) in deleted {
                    tracing::info!(
                        broker = %broker,
                        by_age = e.by_age,
                        by_size = e.by_size,
                        bytes = e.bytes,
                        "retention deleted old events"
                    );
                    if let Some(m) = &metrics {
                        let count = &m.log_retention_deleted;
                        count
                            .with_label_values(&[&*broker, "max_age"])
                            .inc_by(e.by_age as u64);
                        count
                            .with_label_values(&[&*broker, "max_bytes"])
                            .inc_by(e.by_size as u64);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "retention failed"),
        }
        match letters {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(deleted = n, "retention deleted old dead letters");
                if let Some(m) = &metrics {
                    m.deadletter_retention_deleted.inc_by(n as u64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "dead-letter retention failed"),
        }
    }
}

/// The time before which things are too old; 0 (nothing is) when the bound is off.
fn cutoff(now: u64, max_age: Duration) -> u64 {
    if max_age.is_zero() {
        return 0;
    }
    now.saturating_sub(u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX))
}

/// One pass over the event bounds; returns what each broker lost.
fn expire_events(
    backend: &dyn BlockingStore,
    brokers: &[Arc<str>],
    now: u64,
    bounds: &Retention,
) -> Result<Vec<(Arc<str>, Expired)>, LogError> {
    let mut deleted: Vec<(Arc<str>, Expired)> = brokers
        .iter()
        .map(|b| (b.clone(), Expired::default()))
        .collect();
    let old = cutoff(now, bounds.max_age);
    if old > 0 {
        for (broker, total) in &mut deleted {
            loop {
                let e = backend.expire_events(broker, old, 0, CHUNK)?;
                add(total, e);
                if e.by_age < CHUNK {
                    break;
                }
            }
        }
    }
    if bounds.max_bytes > 0 {
        loop {
            let mut stored = 0u64;
            for b in brokers {
                stored += backend.stored(b)?.bytes;
            }
            let Some(excess) = stored.checked_sub(bounds.max_bytes).filter(|&e| e > 0) else {
                break;
            };
            // The broker whose oldest event is the oldest of all gives up a chunk.
            let mut oldest: Option<(u64, usize)> = None;
            for (i, b) in brokers.iter().enumerate() {
                if let Some(t) = backend.oldest_arrival(b)? {
                    if oldest.is_none_or(|(o, _)| t < o) {
                        oldest = Some((t, i));
                    }
                }
            }
            let Some((_, i)) = oldest else { break };
            let e = backend.expire_events(&brokers[i], 0, excess, CHUNK)?;
            if e.by_size == 0 {
                break;
            }
            add(&mut deleted[i].1, e);
        }
    }
    deleted.retain(|(_, e)| e.by_age + e.by_size > 0);
    Ok(deleted)
}

fn add(total: &mut Expired, e: Expired) {
    total.by_age += e.by_age;
    total.by_size += e.by_size;
    total.bytes += e.bytes;
}
