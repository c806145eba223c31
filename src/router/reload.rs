//! Hot reload of subscription files: polled once a second (a content fingerprint, which
//! also catches Kubernetes ConfigMap updates that swap a symlinked folder), and on
//! demand (SIGHUP). An invalid new set is rejected whole: the running set keeps working,
//! the errors are logged and counted.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Routing;
use crate::config::subscriptions;
use crate::config::{Config, ConfigErrors};

/// How often the files are checked for changes.
pub const POLL: Duration = Duration::from_secs(1);

/// Reloads the subscription set into the routers.
pub struct Reloader {
    config: Config,
    routing: Arc<Routing>,
    fingerprint: Mutex<u64>,
    trigger: Notify,
    /// Reloads rejected because the new set was invalid.
    pub failures: AtomicU64,
    /// Reloads applied.
    pub applied: AtomicU64,
}

/// A fingerprint of every subscription file's path and content (0 when they cannot be
/// listed: a listing error is reported by the load itself).
fn fingerprint(config: &Config) -> u64 {
    let mut h = DefaultHasher::new();
    if let Ok(files) = subscriptions::files(config) {
        for f in files {
            f.hash(&mut h);
            std::fs::read(&f).unwrap_or_default().hash(&mut h);
        }
    }
    h.finish()
}

impl Reloader {
    pub fn new(config: Config, routing: Arc<Routing>) -> Arc<Reloader> {
        let fp = fingerprint(&config);
        Arc::new(Reloader {
            config,
            routing,
            fingerprint: Mutex::new(fp),
            trigger: Notify::new(),
            failures: AtomicU64::new(0),
            applied: AtomicU64::new(0),
        })
    }

    /// Loads the files now and, if they are valid, replaces the running set.
    pub fn reload(&self) -> Result<usize, ConfigErrors> {
        let fp = fingerprint(&self.config);
        *self.fingerprint.lock().unwrap_or_else(|p| p.into_inner()) = fp;
        match subscriptions::load(&self.config) {
            Ok(subs) => {
                let n = subs.len();
                self.routing.replace(subs);
                self.applied.fetch_add(1, Ordering::Relaxed);
                tracing::info!(subscriptions = n, "subscriptions reloaded");
                Ok(n)
            }
            Err(errors) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                for e in &errors.0 {
                    tracing::error!(error = %e, "subscription reload rejected; the running set is unchanged");
                }
                Err(errors)
            }
        }
    }

    /// Asks the running loop to reload now (SIGHUP).
    pub fn trigger(&self) {
        self.trigger.notify_one();
    }

    /// Polls for changes until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let forced = tokio::select! {
                _ = tokio::time::sleep(POLL) => false,
                _ = self.trigger.notified() => true,
                _ = shutdown.cancelled() => return,
            };
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let changed = fingerprint(&me.config)
                    != *me.fingerprint.lock().unwrap_or_else(|p| p.into_inner());
                if forced || changed {
                    let _ = me.reload();
                }
            })
            .await;
        }
    }
}
