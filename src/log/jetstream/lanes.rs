//! The lanes of every broker on JetStream, shared by every instance of the fleet.
//!
//! - Stream `<prefix>-<broker>-lanes` (work-queue retention: a task is gone once
//!   acknowledged), subject `<prefix>.<broker>.lanes.<lane>` where `<lane>` is a short
//!   digest of the subscription and sink names. A task is one event of one lane: its
//!   payload the event's sequence, its `Nats-Msg-Id` `<seq>:<lane>` when the router
//!   publishes it, so that a step routed again (a new router after a crash) makes no
//!   second task.
//! - One durable pull consumer per lane (`lane-<lane>`), shared by the instances:
//!   explicit acks; an entry handed out is claimed until it is finished (ack), parked
//!   (a negative ack delayed until it is due) or its claim times out (its instance
//!   went quiet: claims under way are renewed with progress acks). An ordered lane's
//!   consumer has one task out at a time, fleet-wide.
//! - Key-value bucket `<prefix>-state`: the router's progress per broker (its cursor
//!   and each subscription's state, written with the revision last read, so a deposed
//!   router cannot overwrite its successor's), the routing lease per broker, and the
//!   attempts of parked entries.
//! - One instance routes each broker: the holder of `lease.<broker>`. It renews the
//!   lease every [`LEASE_RENEW`]; another instance takes it over once it has seen the
//!   lease unchanged for [`LEASE_TIMEOUT`] (its own clock: no two clocks are compared).

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, kv, stream, AckKind};

use super::Outgoing;
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{ensure_stream, unavailable, JetStreamEvents, JetStreamOptions};
use crate::log::{
    BoxFuture, LaneDepth, LaneEntry, LaneId, LaneSpec, LogError, LogResult, RouteProgress,
    SubscriptionState,
};

/// How often the routing lease is renewed by its holder, and looked at by the others.
pub const LEASE_RENEW: Duration = Duration::from_secs(1);

/// How long the lease must stay unchanged before another instance takes it over.
pub const LEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a take from a lane may wait for the servers' answer.
const TAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the lanes stream keeps a task's message id to refuse its duplicate.
const TASK_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// An unordered lane's consumer may have this many tasks out (in flight on every
/// instance, and parked) before it hands out no more.
const UNORDERED_OUTSTANDING: i64 = 10_000;

/// The lane's token in subjects, consumer names and keys: 16 hex digits of the
/// SHA-256 of `subscription \0 sink`.
pub fn lane_token(lane: &LaneId) -> String {
    let mut bytes = lane.subscription.as_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(lane.sink.as_bytes());
    super::hex(&ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref()[..8])
}

/// The router's progress for one broker, as the bucket holds it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Progress {
    cursor: u64,
    subscriptions: BTreeMap<String, StoredState>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct StoredState {
    sinks: Vec<String>,
    backfill: Option<(u64, u64)>,
}

impl From<&SubscriptionState> for StoredState {
    fn from(s: &SubscriptionState) -> Self {
        StoredState {
            sinks: s.sinks.clone(),
            backfill: s.backfill,
        }
    }
}

impl From<&StoredState> for SubscriptionState {
    fn from(s: &StoredState) -> Self {
        SubscriptionState {
            sinks: s.sinks.clone(),
            backfill: s.backfill,
        }
    }
}

/// A task this instance took and has not finished or parked.
struct Held {
    message: jetstream::Message,
    /// When its claim was last renewed.
    renewed: Instant,
    claim_timeout: Duration,
}

/// One broker's lanes.
struct BrokerLanes {
    stream: String,
    subjects: String,
    progress_key: String,
    lease_key: String,
    leading: watch::Sender<bool>,
    /// The progress as last read or written, with its revision (0: no key yet).
    progress: tokio::sync::Mutex<Option<(Progress, u64)>>,
    /// Per lane token, bumped when a task is published to it.
    wakes: Mutex<HashMap<String, watch::Sender<u64>>>,
    consumers: Mutex<HashMap<String, jetstream::consumer::PullConsumer>>,
    /// By lane token and event sequence.
    held: Mutex<HashMap<(String, u64), Held>>,
}

/// The lanes of every broker, on JetStream.
pub struct JetStreamLanes {
    js: jetstream::Context,
    kv: kv::Store,
    /// The bucket's name (its stream is `KV_<bucket>`, its subjects `$KV.<bucket>.<key>`).
    bucket: String,
    brokers: HashMap<Arc<str>, BrokerLanes>,
    /// Names this instance in the lease.
    instance: String,
    /// The clock parked entries' due times are read by.
    clock: crate::clock::SharedClock,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl JetStreamLanes {
    /// Creates or updates each broker's lanes stream and the state bucket, and starts
    /// the lease, the wake-ups and the claim renewals until `shutdown`.
    pub async fn start(
        events: &JetStreamEvents,
        options: &JetStreamOptions,
        clock: crate::clock::SharedClock,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> LogResult<Arc<JetStreamLanes>> {
        let js = events.js.clone();
        let bucket = format!("{}-state", options.stream_prefix);
        let kv = super::patiently(
            &format!("cannot create or update bucket {bucket}"),
            super::timed_out,
            || {
                js.create_or_update_key_value(kv::Config {
                    bucket: bucket.clone(),
                    history: 1,
                    num_replicas: options.replicas.max(1),
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
            },
        )
        .await?;
        super::wait_for_leader(&js, &format!("KV_{bucket}")).await?;
        let mut brokers = HashMap::new();
        for broker in &events.brokers {
            let stream = format!("{}-{broker}-lanes", options.stream_prefix);
            let subjects = format!("{}.{broker}.lanes", options.stream_prefix);
            ensure_stream(
                &js,
                stream::Config {
                    name: stream.clone(),
                    subjects: vec![format!("{subjects}.*")],
                    storage: stream::StorageType::File,
                    num_replicas: options.replicas.max(1),
                    retention: stream::RetentionPolicy::WorkQueue,
                    allow_direct: true,
                    duplicate_window: TASK_DUPLICATE_WINDOW,
                    ..Default::default()
                },
            )
            .await?;
            brokers.insert(
                broker.clone(),
                BrokerLanes {
                    stream,
                    subjects,
                    progress_key: format!("router.{broker}"),
                    lease_key: format!("lease.{broker}"),
                    leading: watch::Sender::new(false),
                    progress: tokio::sync::Mutex::new(None),
                    wakes: Mutex::default(),
                    consumers: Mutex::default(),
                    held: Mutex::default(),
                },
            );
        }
        let instance = format!(
            "{}-{:016x}",
            std::process::id(),
            std::collections::hash_map::RandomState::new().hash_one(Instant::now())
        );
        let lanes = Arc::new(JetStreamLanes {
            js,
            kv,
            bucket,
            brokers,
            instance,
            clock,
        });
        for broker in lanes.brokers.keys() {
            tracker.spawn(lanes.clone().hold_lease(broker.clone(), shutdown.clone()));
            let subscription = events
                .client
                .subscribe(format!("{}.*", lanes.brokers[broker].subjects))
                .await
                .map_err(|e| unavailable("cannot subscribe to the lanes", e))?;
            tracker.spawn(lanes.clone().follow_tasks(
                broker.clone(),
                subscription,
                shutdown.clone(),
            ));
        }
        tracker.spawn(lanes.clone().renew_claims(shutdown));
        Ok(lanes)
    }

    fn broker(&self, broker: &str) -> LogResult<&BrokerLanes> {
        self.brokers
            .get(broker)
            .ok_or_else(|| LogError::Store(crate::store::StoreError::UnknownBroker(broker.into())))
    }

    fn attempts_key(broker: &str, token: &str, stamp: u64) -> String {
        format!("attempts.{broker}.{token}.{stamp}")
    }

    /// Takes the lease when it is free or its holder went quiet, and renews it while
    /// held; `leading` says which.
    async fn hold_lease(self: Arc<Self>, broker: Arc<str>, shutdown: CancellationToken) {
        let b = &self.brokers[&broker];
        let me = Bytes::from(self.instance.clone());
        // The revision this instance holds, or the one it saw and since when.
        let mut held: Option<u64> = None;
        let mut seen: Option<(u64, Instant)> = None;
        let mut tick = tokio::time::interval(LEASE_RENEW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            held = match held {
                Some(rev) => match self.kv.update(&b.lease_key, me.clone(), rev).await {
                    Ok(rev) => Some(rev),
                    Err(e) => {
                        tracing::warn!(broker = %broker, error = %e, "the routing lease was lost; another instance routes");
                        None
                    }
                },
                None => match self.kv.entry(&b.lease_key).await {
                    Ok(None) => self.kv.create(&b.lease_key, me.clone()).await.ok(),
                    // Free, or this instance's own (held before the servers went
                    // away): taken at once.
                    Ok(Some(entry))
                        if entry.operation != kv::Operation::Put || entry.value == me =>
                    {
                        self.kv
                            .update(&b.lease_key, me.clone(), entry.revision)
                            .await
                            .ok()
                    }
                    Ok(Some(entry)) => match seen {
                        Some((rev, since))
                            if rev == entry.revision && since.elapsed() >= LEASE_TIMEOUT =>
                        {
                            self.kv
                                .update(&b.lease_key, me.clone(), entry.revision)
                                .await
                                .ok()
                        }
                        Some((rev, _)) if rev == entry.revision => None,
                        _ => {
                            seen = Some((entry.revision, Instant::now()));
                            None
                        }
                    },
                    Err(_) => None,
                },
            };
            let leading = held.is_some();
            if leading != *b.leading.borrow() {
                if leading {
                    tracing::info!(broker = %broker, "this instance routes the broker now");
                    // The last leader may have moved the progress on.
                    *b.progress.lock().await = None;
                    seen = None;
                }
                b.leading.send_replace(leading);
            }
        }
        // Hands the lease on at once rather than after the timeout.
        if let Some(rev) = held {
            let _ = self
                .kv
                .delete_expect_revision(&b.lease_key, Some(rev))
                .await;
        }
        b.leading.send_replace(false);
    }

    /// Wakes a lane when a task is published to it (by any instance).
    async fn follow_tasks(
        self: Arc<Self>,
        broker: Arc<str>,
        mut subscription: async_nats::Subscriber,
        shutdown: CancellationToken,
    ) {
        let b = &self.brokers[&broker];
        loop {
            let message = tokio::select! {
                m = subscription.next() => m,
                _ = shutdown.cancelled() => break,
            };
            let Some(message) = message else { break };
            let token = message.subject.rsplit('.').next().unwrap_or_default();
            if let Some(w) = lock(&b.wakes).get(token) {
                w.send_modify(|n| *n += 1);
            }
        }
    }

    /// Renews the claims on the tasks under way before they time out.
    async fn renew_claims(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            for b in self.brokers.values() {
                let due: Vec<async_nats::jetstream::message::Acker> = {
                    let mut held = lock(&b.held);
                    held.values_mut()
                        .filter(|h| h.renewed.elapsed() >= h.claim_timeout / 3)
                        .map(|h| {
                            h.renewed = Instant::now();
                            h.message.clone().split().1
                        })
                        .collect()
                };
                for acker in due {
                    let _ = acker.ack_with(AckKind::Progress).await;
                }
            }
        }
    }

    /// The broker's progress, read from the bucket unless known.
    async fn with_progress<T>(
        &self,
        broker: &str,
        f: impl FnOnce(&mut Progress) -> (T, bool),
    ) -> LogResult<T> {
        let b = self.broker(broker)?;
        let mut cached = b.progress.lock().await;
        if cached.is_none() {
            *cached = Some(match self.kv.entry(&b.progress_key).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                    let progress = serde_json::from_slice(&entry.value).map_err(|e| {
                        LogError::Unavailable(format!(
                            "the routing state {} cannot be read: {e}",
                            b.progress_key
                        ))
                    })?;
                    (progress, entry.revision)
                }
                Ok(_) => (Progress::default(), 0),
                Err(e) => return Err(unavailable("cannot read the routing state", e)),
            });
        }
        let (progress, revision) = cached.as_mut().expect("read above");
        let mut next = progress.clone();
        let (out, changed) = f(&mut next);
        if changed {
            let value = Bytes::from(serde_json::to_vec(&next).map_err(std::io::Error::other)?);
            let written = if *revision == 0 {
                self.kv
                    .create(&b.progress_key, value)
                    .await
                    .map_err(|e| e.to_string())
            } else {
                self.kv
                    .update(&b.progress_key, value, *revision)
                    .await
                    .map_err(|e| e.to_string())
            };
            match written {
                Ok(rev) => {
                    *progress = next;
                    *revision = rev;
                }
                Err(e) => {
                    // Another router wrote meanwhile: read again next time.
                    *cached = None;
                    return Err(LogError::Unavailable(format!(
                        "the routing state was not written ({e}); another instance may route this broker"
                    )));
                }
            }
        }
        Ok(out)
    }

    /// Publishes tasks and waits for JetStream to hold every one.
    async fn publish_tasks(
        &self,
        broker: &str,
        entries: &[(LaneId, u64)],
        with_ids: bool,
    ) -> LogResult<()> {
        let b = self.broker(broker)?;
        let tasks: Vec<Outgoing> = entries
            .iter()
            .map(|(lane, seq)| {
                let token = lane_token(lane);
                Outgoing {
                    subject: format!("{}.{token}", b.subjects),
                    payload: Bytes::from(seq.to_string()),
                    id: with_ids.then(|| format!("{seq}:{token}")),
                }
            })
            .collect();
        let mut acks = Vec::with_capacity(tasks.len());
        for t in &tasks {
            acks.push(std::future::IntoFuture::into_future(
                t.send(&self.js).await?,
            ));
        }
        let answers = futures_util::future::join_all(acks).await;
        for (t, first) in tasks.iter().zip(answers) {
            t.settle(&self.js, first).await?;
        }
        Ok(())
    }

    fn consumer(&self, broker: &str, token: &str) -> LogResult<jetstream::consumer::PullConsumer> {
        lock(&self.broker(broker)?.consumers)
            .get(token)
            .cloned()
            .ok_or_else(|| LogError::Unavailable("the lane is not open".into()))
    }

    /// Removes a parked entry's attempts from the bucket without a marker left behind, so
    /// the bucket's subjects under `attempts.<broker>.<token>` count the lane's parked
    /// entries (see `depth`).
    async fn forget_attempts(&self, broker: &str, token: &str, stamp: u64) {
        let subject = format!(
            "$KV.{}.{}",
            self.bucket,
            Self::attempts_key(broker, token, stamp)
        );
        let purged = match self.stream(&format!("KV_{}", self.bucket)).await {
            Ok(stream) => stream.purge().filter(subject).await.map(|_| ()),
            Err(e) => {
                tracing::debug!(error = %e, "a parked entry's attempts stay in the bucket");
                return;
            }
        };
        if let Err(e) = purged {
            tracing::debug!(error = %e, "a parked entry's attempts stay in the bucket");
        }
    }

    /// How many of a lane's entries are parked: the attempts the bucket keeps for it.
    async fn parked(&self, broker: &str, token: &str) -> LogResult<u64> {
        let stream = self.stream(&format!("KV_{}", self.bucket)).await?;
        let filter = format!("$KV.{}.attempts.{broker}.{token}.*", self.bucket);
        let mut subjects = stream
            .info_with_subjects(filter)
            .await
            .map_err(|e| unavailable("cannot count the parked entries", e))?;
        let mut n = 0;
        while let Some(subject) = subjects.next().await {
            subject.map_err(|e| unavailable("cannot count the parked entries", e))?;
            n += 1;
        }
        Ok(n)
    }

    async fn stream(&self, name: &str) -> LogResult<stream::Stream<()>> {
        self.js
            .get_stream_no_info(name)
            .await
            .map_err(|e| unavailable(&format!("stream {name}"), e))
    }
}

impl JetStreamLanes {
    /// The paused lanes of `broker` (the bucket's `paused.<broker>`: a JSON list of
    /// `[subscription, sink]`) and the key's revision (0: none yet).
    async fn read_paused(&self, broker: &str) -> LogResult<(Vec<LaneId>, u64)> {
        let key = format!("paused.{broker}");
        match self.kv.entry(&key).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                let pairs: Vec<(String, String)> =
                    serde_json::from_slice(&entry.value).map_err(|e| {
                        LogError::Unavailable(format!("the paused lanes {key} cannot be read: {e}"))
                    })?;
                Ok((
                    pairs.into_iter().map(|(s, k)| LaneId::new(s, k)).collect(),
                    entry.revision,
                ))
            }
            // Deleted or purged: a write must be an update of that revision.
            Ok(Some(entry)) => Ok((Vec::new(), entry.revision)),
            Ok(None) => Ok((Vec::new(), 0)),
            Err(e) => Err(unavailable("cannot read the paused lanes", e)),
        }
    }
}

impl crate::log::LaneBackend for JetStreamLanes {
    fn router_cursor<'a>(&'a self, broker: &'a str) -> BoxFuture<'a, LogResult<u64>> {
        Box::pin(async move { self.with_progress(broker, |p| (p.cursor, false)).await })
    }

    fn record_routes<'a>(
        &'a self,
        broker: &'a str,
        entries: &'a [(LaneId, u64)],
        progress: &'a RouteProgress,
    ) -> BoxFuture<'a, LogResult<()>> {
        Box::pin(async move {
            // A put-back (a replay) is a new task, whatever was routed before.
            let routed = !matches!(progress, RouteProgress::None);
            self.publish_tasks(broker, entries, routed).await?;
            match progress {
                RouteProgress::None => Ok(()),
                RouteProgress::Cursor(c) => {
                    self.with_progress(broker, |p| {
                        let moved = *c > p.cursor;
                        p.cursor = p.cursor.max(*c);
                        ((), moved)
                    })
                    .await
                }
                RouteProgress::Subscription(name, state) => {
                    self.with_progress(broker, |p| {
                        p.subscriptions.insert(name.clone(), state.into());
                        ((), true)
                    })
                    .await
                }
            }
        })
    }

    fn requeue<'a>(
        &'a self,
        broker: &'a str,
        lane: &'a LaneId,
        seq: u64,
    ) -> BoxFuture<'a, LogResult<()>> {
        Box::pin(async move {
            self.publish_tasks(broker, &[(lane.clone(), seq)], false)
                .await
        })
    }

    fn subscription_states<'a>(
        &'a self,
        broker: &'a str,
    ) -> BoxFuture<'a, LogResult<Vec<(String, SubscriptionState)>>> {
        Box::pin(async move {
            self.with_progress(broker, |p| {
                let states = p
                    .subscriptions
                    .iter()
                    .map(|(name, s)| (name.clone(), s.into()))
                    .collect();
                (states, false)
            })
            .await
        })
    }

    fn paused<'a>(&'a self, broker: &'a str) -> BoxFuture<'a, LogResult<Vec<LaneId>>> {
        Box::pin(async move {
            let (lanes, _) = self.read_paused(broker).await?;
            Ok(lanes)
        })
    }

    fn set_paused<'a>(
        &'a self,
        broker: &'a str,
        lane: &'a LaneId,
        paused: bool,
    ) -> BoxFuture<'a, LogResult<()>> {
        Box::pin(async move {
            self.broker(broker)?;
            let key = format!("paused.{broker}");
            // Read, change, write if no other instance wrote meanwhile; else again.
            for _ in 0..20 {
                let (mut lanes, revision) = self.read_paused(broker).await?;
                let at = lanes.iter().position(|l| l == lane);
                match (paused, at) {
                    (true, None) => lanes.push(lane.clone()),
                    (false, Some(i)) => {
                        lanes.remove(i);
                    }
                    _ => return Ok(()),
                }
                let pairs: Vec<(&str, &str)> = lanes
                    .iter()
                    .map(|l| (l.subscription.as_str(), l.sink.as_str()))
                    .collect();
                let value = Bytes::from(serde_json::to_vec(&pairs).map_err(std::io::Error::other)?);
                let written = match revision {
                    0 => self
                        .kv
                        .create(&key, value)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    rev => self
                        .kv
                        .update(&key, value, rev)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                };
                if written.is_ok() {
                    return Ok(());
                }
            }
            Err(LogError::Unavailable(format!(
                "the paused lanes of broker {broker} could not be written: other instances kept changing them"
            )))
        })
    }

    fn drop_lanes<'a>(
        &'a self,
        broker: &'a str,
        subscription: &'a str,
        sinks: Option<&'a [String]>,
    ) -> BoxFuture<'a, LogResult<usize>> {
        Box::pin(async move {
            let b = self.broker(broker)?;
            let known = self
                .with_progress(broker, |p| {
                    let sinks = p
                        .subscriptions
                        .get(subscription)
                        .map(|s| s.sinks.clone())
                        .unwrap_or_default();
                    (sinks, false)
                })
                .await?;
            let gone: Vec<String> = match sinks {
                Some(s) => s.to_vec(),
                None => known,
            };
            let stream = self.stream(&b.stream).await?;
            let mut dropped = 0;
            for sink in &gone {
                let token = lane_token(&LaneId::new(subscription, sink.clone()));
                let name = format!("lane-{token}");
                if stream.delete_consumer(&name).await.is_ok() {
                    lock(&b.consumers).remove(&token);
                }
                let purged = stream
                    .purge()
                    .filter(format!("{}.{token}", b.subjects))
                    .await
                    .map_err(|e| unavailable("cannot purge a removed lane", e))?;
                dropped += purged.purged as usize;
                lock(&b.held).retain(|(t, _), _| *t != token);
            }
            self.with_progress(broker, |p| {
                match sinks {
                    None => {
                        p.subscriptions.remove(subscription);
                    }
                    Some(s) => {
                        if let Some(state) = p.subscriptions.get_mut(subscription) {
                            state.sinks.retain(|k| !s.contains(k));
                        }
                    }
                }
                ((), true)
            })
            .await?;
            Ok(dropped)
        })
    }

    fn entries<'a>(
        &'a self,
        broker: &'a str,
        lane: &'a LaneId,
        _from: u64,
        limit: usize,
    ) -> BoxFuture<'a, LogResult<Vec<LaneEntry>>> {
        Box::pin(async move {
            let b = self.broker(broker)?;
            let token = lane_token(lane);
            let consumer = self.consumer(broker, &token)?;
            let claim_timeout = consumer.cached_info().config.ack_wait;
            // A request the consumer's leader never answers (it went away) ends
            // too: the lane loop waits on this.
            let mut batch = tokio::time::timeout(
                TAKE_TIMEOUT,
                consumer.fetch().max_messages(limit.max(1)).messages(),
            )
            .await
            .map_err(|e| unavailable("cannot take from the lane", e))?
            .map_err(|e| unavailable("cannot take from the lane", e))?;
            let mut out = Vec::new();
            let deadline = tokio::time::Instant::now() + TAKE_TIMEOUT;
            while let Ok(Some(message)) = tokio::time::timeout_at(deadline, batch.next()).await {
                let message = match message {
                    Ok(m) => m,
                    // What came before the failure is claimed: it is handed over.
                    Err(e) if !out.is_empty() => {
                        tracing::debug!(error = %e, "a take from the lane ended early");
                        break;
                    }
                    Err(e) => return Err(unavailable("cannot take from the lane", e)),
                };
                let (stamp, delivered) = match message.info() {
                    Ok(info) => (info.stream_sequence, info.delivered),
                    Err(_) => continue,
                };
                let Some(seq) = std::str::from_utf8(&message.payload)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                else {
                    // Not a task: nothing to deliver.
                    let _ = message.ack().await;
                    continue;
                };
                // A task handed out before may have been parked with attempts made.
                let attempts = if delivered > 1 {
                    match self.kv.get(Self::attempts_key(broker, &token, stamp)).await {
                        Ok(Some(v)) => std::str::from_utf8(&v)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0),
                        _ => 0,
                    }
                } else {
                    0
                };
                let twin = {
                    let mut held = lock(&b.held);
                    let key = (token.clone(), seq);
                    let twin = held.get(&key).is_some_and(|h| {
                        h.message.info().is_ok_and(|i| i.stream_sequence != stamp)
                    });
                    if !twin {
                        held.insert(
                            key,
                            Held {
                                message: message.clone(),
                                renewed: Instant::now(),
                                claim_timeout,
                            },
                        );
                    }
                    twin
                };
                if twin {
                    // A second task for an event this instance is delivering already
                    // (a put-back while it was out): that delivery covers it.
                    let _ = message.ack().await;
                    continue;
                }
                out.push(LaneEntry {
                    seq,
                    attempts,
                    stamp,
                });
            }
            out.sort_by_key(|e| e.seq);
            Ok(out)
        })
    }

    fn finish<'a>(
        &'a self,
        broker: &'a str,
        lane: &'a LaneId,
        entries: &'a [LaneEntry],
    ) -> BoxFuture<'a, LogResult<()>> {
        Box::pin(async move {
            let b = self.broker(broker)?;
            let token = lane_token(lane);
            let done: Vec<(Held, &LaneEntry)> = {
                let mut held = lock(&b.held);
                entries
                    .iter()
                    .filter_map(|e| {
                        let key = (token.clone(), e.seq);
                        match held.get(&key) {
                            Some(h)
                                if h.message.info().is_ok_and(|i| i.stream_sequence == e.stamp) =>
                            {
                                held.remove(&key).map(|h| (h, e))
                            }
                            _ => None,
                        }
                    })
                    .collect()
            };
            for (h, e) in done {
                h.message
                    .ack()
                    .await
                    .map_err(|err| unavailable("cannot acknowledge a delivery task", err))?;
                if e.attempts > 0 {
                    self.forget_attempts(broker, &token, e.stamp).await;
                }
            }
            Ok(())
        })
    }

    fn park<'a>(
        &'a self,
        broker: &'a str,
        lane: &'a LaneId,
        seq: u64,
        due_unix_nanos: u64,
        attempts: u32,
    ) -> BoxFuture<'a, LogResult<()>> {
        Box::pin(async move {
            let b = self.broker(broker)?;
            let token = lane_token(lane);
            let Some(h) = lock(&b.held).remove(&(token.clone(), seq)) else {
                return Err(LogError::Unavailable(format!(
                    "event {seq} is not held by this instance"
                )));
            };
            let stamp = h.message.info().map(|i| i.stream_sequence).unwrap_or(0);
            // Nothing tried yet (a delivery that could not start): only handed back.
            if attempts > 0 {
                self.kv
                    .put(
                        Self::attempts_key(broker, &token, stamp),
                        Bytes::from(attempts.to_string()),
                    )
                    .await
                    .map_err(|e| unavailable("cannot keep a parked entry's attempts", e))?;
            }
            let now = self.clock.now_unix_nanos();
            let delay = Duration::from_nanos(due_unix_nanos.saturating_sub(now));
            h.message
                .ack_with(AckKind::Nak(Some(delay)))
                .await
                .map_err(|e| unavailable("cannot park a delivery task", e))
        })
    }

    fn unpark_due<'a>(
        &'a self,
        _broker: &'a str,
        _lane: &'a LaneId,
        _now_unix_nanos: u64,
    ) -> BoxFuture<'a, LogResult<(usize, Option<u64>)>> {
        // JetStream hands a parked task out again when it is due.
        Box::pin(async { Ok((0, None)) })
    }

    fn depth<'a>(
        &'a self,
        broker: &'a str,
        lane: &'a LaneId,
    ) -> BoxFuture<'a, LogResult<LaneDepth>> {
        Box::pin(async move {
            let b = self.broker(broker)?;
            let token = lane_token(lane);
            let stream = self.stream(&b.stream).await?;
            let info = match stream.consumer_info(format!("lane-{token}")).await {
                Ok(info) => info,
                // Not open yet: nothing taken, nothing known.
                Err(_) => return Ok(LaneDepth::default()),
            };
            // A parked task is one JetStream will hand out again: it stays pending an ack.
            let parked = self.parked(broker, &token).await?;
            let unfinished = info.num_pending + info.num_ack_pending as u64;
            let oldest = if unfinished == 0 {
                None
            } else {
                stream
                    .direct_get_first_for_subject(format!("{}.{token}", b.subjects))
                    .await
                    .ok()
                    .and_then(|m| std::str::from_utf8(&m.payload).ok()?.parse().ok())
            };
            Ok(LaneDepth {
                pending: unfinished.saturating_sub(parked),
                parked,
                oldest,
            })
        })
    }

    fn unfinished<'a>(
        &'a self,
        broker: &'a str,
        lane: &'a LaneId,
        limit: usize,
    ) -> BoxFuture<'a, LogResult<Vec<u64>>> {
        Box::pin(async move {
            let b = self.broker(broker)?;
            let subject = format!("{}.{}", b.subjects, lane_token(lane));
            let stream = self.stream(&b.stream).await?;
            // The work queue keeps a task until it is acknowledged: its messages on the
            // lane's subject are what the lane still owes, taken or not.
            let mut seqs = std::collections::BTreeSet::new();
            let mut next = 1;
            while seqs.len() < limit {
                let message = match stream
                    .direct_get_next_for_subject(subject.as_str(), Some(next))
                    .await
                {
                    Ok(m) => m,
                    Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => break,
                    Err(e) => return Err(unavailable("cannot read the lane", e)),
                };
                next = message.sequence + 1;
                if let Some(seq) = std::str::from_utf8(&message.payload)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    seqs.insert(seq);
                }
            }
            Ok(seqs.into_iter().collect())
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn open<'a>(
        &'a self,
        broker: &'a str,
        lane: &'a LaneId,
        spec: LaneSpec,
    ) -> BoxFuture<'a, LogResult<()>> {
        Box::pin(async move {
            let b = self.broker(broker)?;
            let token = lane_token(lane);
            let name = format!("lane-{token}");
            let config = pull::Config {
                durable_name: Some(name.clone()),
                name: Some(name.clone()),
                description: Some(format!("{} → {}", lane.subscription, lane.sink)),
                filter_subject: format!("{}.{token}", b.subjects),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ack_wait: spec.claim_timeout,
                max_deliver: -1,
                max_ack_pending: if spec.ordered {
                    1
                } else {
                    UNORDERED_OUTSTANDING.max(i64::from(spec.max_in_flight))
                },
                ..Default::default()
            };
            let stream = self.stream(&b.stream).await?;
            let consumer: jetstream::consumer::PullConsumer = stream
                .create_consumer(config)
                .await
                .map_err(|e| unavailable(&format!("cannot create or update consumer {name}"), e))?;
            lock(&b.consumers).insert(token.clone(), consumer);
            lock(&b.wakes)
                .entry(token)
                .or_insert_with(|| watch::Sender::new(0));
            Ok(())
        })
    }

    fn wake(&self, broker: &str, lane: &LaneId) -> Option<watch::Receiver<u64>> {
        let b = self.brokers.get(broker)?;
        Some(
            lock(&b.wakes)
                .entry(lane_token(lane))
                .or_insert_with(|| watch::Sender::new(0))
                .subscribe(),
        )
    }

    fn leadership(&self, broker: &str) -> Option<watch::Receiver<bool>> {
        self.brokers.get(broker).map(|b| b.leading.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_token_is_short_stable_and_tells_lanes_apart() {
        let a = lane_token(&LaneId::new("notify", "http://a/"));
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, lane_token(&LaneId::new("notify", "http://a/")));
        assert_ne!(a, lane_token(&LaneId::new("notify", "http://b/")));
        // The separator keeps the two names apart.
        assert_ne!(
            lane_token(&LaneId::new("ab", "c")),
            lane_token(&LaneId::new("a", "bc"))
        );
    }
}
