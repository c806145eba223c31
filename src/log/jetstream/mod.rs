//! The events, the lanes ([`lanes`]) and the dead letters of every broker on NATS
//! JetStream, shared by every Switchyard instance that names the same servers and
//! prefix.
//!
//! - Stream `<prefix>-<broker>`, subject `<prefix>.<broker>.events`, file storage,
//!   `replicas` copies, direct get allowed (reads are answered by any replica), the
//!   retention bounds as its limits (`max_age`, `max_bytes`, the oldest discarded). It is
//!   created, or updated to the config, when the backend starts.
//! - An append publishes each record and resolves once JetStream acknowledged every one:
//!   a `202` means JetStream holds the event (with `replicas: 3`, a quorum does; the
//!   servers sync to disk on their own timer, see docs). The stream's sequence is the
//!   event's.
//! - Dedupe: a keyed event is published with `Nats-Msg-Id` = the SHA-256 of its key, and
//!   the stream's duplicate window is `dedupe.window`, so a duplicate is refused by the
//!   stream whichever instance took it; its acknowledgement names the original's
//!   sequence.
//! - The head moves with this instance's acknowledgements at once, and with every
//!   instance's appends within [`HEAD_POLL`].
//! - Reads are batched direct gets; the first sequence at or after a time is a binary
//!   search over the records' own arrival times, as on the embedded backend.

pub mod lanes;

use std::collections::HashMap;
use std::future::IntoFuture;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    record, Append, AppendOutcome, BoxFuture, BrokerStats, LogError, LogRecord, LogResult, Stored,
};

/// How often the head is read from the stream, to see other instances' appends.
pub const HEAD_POLL: Duration = Duration::from_millis(200);

/// How many times a publish the servers could not place yet is sent again (20 ms
/// apart) before it fails: two seconds.
const REPUBLISH_TRIES: u32 = 100;

/// The servers' error code for a message whose id a message not yet decided holds.
const DUPLICATE_IN_PROCESS: u64 = 10158;

/// Whether a failed publish is worth sending again at once: a clustered stream answers
/// a message whose id another one (of the same batch, or of another instance) holds in
/// its replicas' consensus with "in process", and a duplicate once that one is decided;
/// and a server that has not yet heard of a stream just created (or moved) has no
/// responder for its subject.
fn republish(e: &jetstream::context::PublishError) -> bool {
    e.kind() == jetstream::context::PublishErrorKind::StreamNotFound
        || std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<jetstream::Error>())
            .is_some_and(|js| js.error_code() == jetstream::ErrorCode(DUPLICATE_IN_PROCESS))
}

/// One message to publish: its subject, payload and, for dedupe, its message id.
pub(crate) struct Outgoing {
    pub subject: String,
    pub payload: Bytes,
    pub id: Option<String>,
}

impl Outgoing {
    /// Sends the message; the acknowledgement is awaited with [`Outgoing::settle`].
    pub async fn send(
        &self,
        js: &jetstream::Context,
    ) -> LogResult<jetstream::context::PublishAckFuture> {
        let mut message = jetstream::message::PublishMessage::build().payload(self.payload.clone());
        if let Some(id) = &self.id {
            message = message.message_id(id.as_str());
        }
        js.send_publish(self.subject.clone(), message)
            .await
            .map_err(|e| unavailable("cannot publish to JetStream", e))
    }

    /// The message's acknowledgement, from `first` (the first send's answer) or, where
    /// that is worth asking again (see `republish`), a later send's.
    pub async fn settle(
        &self,
        js: &jetstream::Context,
        first: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
    ) -> LogResult<jetstream::publish::PublishAck> {
        let mut ack = first;
        let mut tries = 0;
        while ack.as_ref().is_err_and(republish) && tries < REPUBLISH_TRIES {
            tries += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            ack = self.send(js).await?.await;
        }
        ack.map_err(|e| unavailable("JetStream did not acknowledge", e))
    }
}

/// How many times a read short of the acknowledged head asks again (20 ms apart)
/// before it returns what it has: a replica catching up, or records deleted.
const CATCH_UP_TRIES: u32 = 10;

/// At most this many records come back from one batched direct get.
const READ_BATCH: usize = 256;

/// How a client proves who it is to the NATS servers.
#[derive(Clone, Default)]
pub enum Credentials {
    #[default]
    None,
    Token(String),
    UserPassword(String, String),
    /// A `.creds` file (a user JWT and its NKey seed).
    CredsFile(PathBuf),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never appear in logs.
        match self {
            Credentials::None => write!(f, "None"),
            Credentials::Token(_) => write!(f, "Token(<secret>)"),
            Credentials::UserPassword(user, _) => write!(f, "UserPassword({user}, <secret>)"),
            Credentials::CredsFile(p) => write!(f, "CredsFile({})", p.display()),
        }
    }
}

/// TLS to the NATS servers.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key, for servers that verify clients.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Settings of the JetStream backend.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// `nats://host:port` URLs.
    pub servers: Vec<String>,
    /// Copies of each stream (1-5, at most the cluster's size).
    pub replicas: usize,
    /// Streams are named `<prefix>-<broker>`, subjects `<prefix>.<broker>.…`.
    pub stream_prefix: String,
    pub credentials: Credentials,
    pub tls: Option<Tls>,
    /// Zero turns dedupe off.
    pub dedupe_window: Duration,
    /// Zero keeps events for ever.
    pub max_age: Duration,
    /// Zero sets no bound.
    pub max_bytes: u64,
}

impl JetStreamOptions {
    /// The stream that holds `broker`'s events.
    pub fn stream_name(&self, broker: &str) -> String {
        format!("{}-{broker}", self.stream_prefix)
    }

    /// The subject `broker`'s events are published to.
    pub fn subject(&self, broker: &str) -> String {
        format!("{}.{broker}.events", self.stream_prefix)
    }

    fn stream_config(&self, broker: &str) -> stream::Config {
        // JetStream wants the duplicate window inside the age bound, and both at least
        // 100 ms; a window of zero means its default (2 minutes), harmless without ids.
        let mut window = self.dedupe_window;
        if !self.max_age.is_zero() {
            window = window.min(self.max_age);
        }
        stream::Config {
            name: self.stream_name(broker),
            subjects: vec![self.subject(broker)],
            storage: stream::StorageType::File,
            num_replicas: self.replicas.max(1),
            allow_direct: true,
            discard: stream::DiscardPolicy::Old,
            retention: stream::RetentionPolicy::Limits,
            max_age: self.max_age,
            max_bytes: if self.max_bytes == 0 {
                -1
            } else {
                i64::try_from(self.max_bytes).unwrap_or(i64::MAX)
            },
            duplicate_window: window.max(Duration::from_millis(100)),
            ..Default::default()
        }
    }
}

/// One broker's stream.
struct BrokerStream {
    name: String,
    subject: String,
    head: watch::Sender<u64>,
}

/// The events of every broker, on JetStream.
pub struct JetStreamEvents {
    client: async_nats::Client,
    js: jetstream::Context,
    brokers: Vec<Arc<str>>,
    streams: HashMap<Arc<str>, BrokerStream>,
    dedupe: bool,
    servers: String,
}

impl JetStreamEvents {
    /// The largest message the connected server takes (its `max_payload`).
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    /// The largest event body whose record and dead letter both fit in one message of
    /// `max_payload` bytes: a dead letter carries the record in base64 (4 bytes for 3)
    /// beside the sink's answer and its own fields, given [`LETTER_HEADROOM`].
    pub fn largest_event(max_payload: usize) -> u64 {
        (max_payload.saturating_sub(LETTER_HEADROOM) / 4 * 3) as u64
    }
}

/// What a dead letter adds to its event's record, at most: the attributes' envelope,
/// the sink's answer (1 KiB of it, in base64), the error and the letter's own fields.
pub const LETTER_HEADROOM: usize = 64 << 10;

/// A JetStream or connection failure, as the log reports it.
fn unavailable(what: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(format!("{what}: {}", without_repeats(&e.to_string())))
}

/// The client's error text with a part said twice in a row said once: its errors often
/// end with their source's text, which is their own ("timed out: timed out").
fn without_repeats(text: &str) -> String {
    let mut parts: Vec<&str> = text.split(": ").collect();
    parts.dedup();
    parts.join(": ")
}

/// The `Nats-Msg-Id` of a dedupe key: its SHA-256, hex.
pub fn message_id(key: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, key).as_ref())
}

/// Lower-case hex of `bytes`, in one allocation (it runs per event and per task).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

impl JetStreamEvents {
    /// Connects to the servers, creates or updates each broker's stream, and starts
    /// following the heads until `shutdown`.
    pub async fn connect(
        options: &JetStreamOptions,
        brokers: &[String],
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> LogResult<Arc<JetStreamEvents>> {
        let mut connect = async_nats::ConnectOptions::new()
            .name("switchyard")
            .request_timeout(Some(Duration::from_secs(5)));
        connect = match &options.credentials {
            Credentials::None => connect,
            Credentials::Token(t) => connect.token(t.clone()),
            Credentials::UserPassword(u, p) => connect.user_and_password(u.clone(), p.clone()),
            Credentials::CredsFile(path) => connect
                .credentials_file(path)
                .await
                .map_err(|e| unavailable(&format!("cannot read {}", path.display()), e))?,
        };
        if let Some(tls) = &options.tls {
            connect = connect.require_tls(true);
            if let Some(ca) = &tls.ca_file {
                connect = connect.add_root_certificates(ca.clone());
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                connect = connect.add_client_certificate(cert.clone(), key.clone());
            }
        }
        let servers = options.servers.join(", ");
        let client = connect
            .connect(options.servers.clone())
            .await
            .map_err(|e| unavailable(&format!("cannot connect to {servers}"), e))?;
        let js = jetstream::new(client.clone());
        let mut streams = HashMap::new();
        let mut names = Vec::new();
        for b in brokers {
            let info = ensure_stream(&js, options.stream_config(b)).await?;
            let broker: Arc<str> = Arc::from(b.as_str());
            names.push(broker.clone());
            streams.insert(
                broker,
                BrokerStream {
                    name: options.stream_name(b),
                    subject: options.subject(b),
                    head: watch::Sender::new(info.state.last_sequence),
                },
            );
        }
        let events = Arc::new(JetStreamEvents {
            client,
            js,
            brokers: names,
            streams,
            dedupe: !options.dedupe_window.is_zero(),
            servers,
        });
        tracker.spawn(follow_heads(events.clone(), shutdown));
        Ok(events)
    }

    fn stream(&self, broker: &str) -> LogResult<&BrokerStream> {
        self.streams
            .get(broker)
            .ok_or_else(|| LogError::Store(crate::store::StoreError::UnknownBroker(broker.into())))
    }

    /// The stream's last sequence, asked of the servers.
    async fn last_sequence(&self, broker: &str) -> LogResult<u64> {
        Ok(self.stream_info(broker).await?.state.last_sequence)
    }

    async fn stream_info(&self, broker: &str) -> LogResult<stream::Info> {
        let s = self.stream(broker)?;
        let stream = self
            .js
            .get_stream_no_info(&s.name)
            .await
            .map_err(|e| unavailable(&format!("stream {}", s.name), e))?;
        stream
            .get_info()
            .await
            .map_err(|e| unavailable(&format!("stream {}", s.name), e))
    }

    /// Publishes one broker's appends and waits for every acknowledgement.
    async fn publish(&self, broker: &str, appends: Vec<Append>) -> LogResult<Vec<AppendOutcome>> {
        let s = self.stream(broker)?;
        let messages: Vec<Outgoing> = appends
            .into_iter()
            .map(|a| Outgoing {
                subject: s.subject.clone(),
                id: match (self.dedupe, &a.dedupe_key) {
                    (true, Some(key)) => Some(message_id(key)),
                    _ => None,
                },
                payload: a.record,
            })
            .collect();
        let mut acks = Vec::with_capacity(messages.len());
        for m in &messages {
            acks.push(m.send(&self.js).await?.into_future());
        }
        let mut outcomes = Vec::with_capacity(acks.len());
        let mut top = 0;
        let answers = futures_util::future::join_all(acks).await;
        for (m, first) in messages.iter().zip(answers) {
            let ack = m.settle(&self.js, first).await?;
            top = top.max(ack.sequence);
            outcomes.push(if ack.duplicate {
                AppendOutcome::Duplicate(ack.sequence)
            } else {
                AppendOutcome::Stored(ack.sequence)
            });
        }
        s.head.send_if_modified(|h| {
            let moved = top > *h;
            *h = (*h).max(top);
            moved
        });
        Ok(outcomes)
    }

    /// Up to `limit` records from `from` on, in one batched direct get.
    async fn read_batch(&self, broker: &str, from: u64, limit: usize) -> LogResult<Vec<LogRecord>> {
        let s = self.stream(broker)?;
        Ok(raw_batch(&self.client, &s.name, from, limit)
            .await?
            .into_iter()
            .filter_map(|(seq, payload)| record::decode(seq, payload))
            .collect())
    }

    /// The arrival time of the first record at or after `seq`.
    async fn arrival_at(&self, broker: &str, seq: u64) -> LogResult<Option<(u64, u64)>> {
        Ok(self
            .read_batch(broker, seq, 1)
            .await?
            .first()
            .map(|r| (r.seq, r.arrival_unix_nanos)))
    }
}

/// Up to `limit` messages of stream `name` from sequence `from` on, with their
/// sequences, in one batched direct get (nats-server 2.11 or newer answers a batch).
async fn raw_batch(
    client: &async_nats::Client,
    name: &str,
    from: u64,
    limit: usize,
) -> LogResult<Vec<(u64, Bytes)>> {
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| unavailable("cannot read the stream", e))?;
    let request = serde_json::json!({ "seq": from.max(1), "batch": limit });
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{name}"),
            inbox,
            Bytes::from(request.to_string()),
        )
        .await
        .map_err(|e| unavailable("cannot read the stream", e))?;
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), replies.next()).await;
        let Ok(Some(message)) = next else {
            return Err(LogError::Unavailable(format!(
                "stream {name}: a read got no answer"
            )));
        };
        match message.status.map(|c| c.as_u16()) {
            // The end of the batch, or nothing at or after `from`.
            Some(204) | Some(404) => break,
            Some(code) => {
                return Err(LogError::Unavailable(format!(
                    "stream {name}: a read was answered {code}"
                )))
            }
            None => {}
        }
        let seq = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Sequence"))
            .and_then(|v| v.as_str().parse::<u64>().ok());
        if let Some(seq) = seq {
            out.push((seq, message.payload));
        }
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// Creates the stream, or updates it to `config`, and waits until it can take appends.
async fn ensure_stream(js: &jetstream::Context, config: stream::Config) -> LogResult<stream::Info> {
    let name = config.name.clone();
    let info = patiently(
        &format!("cannot create or update stream {name}"),
        timed_out,
        || js.create_or_update_stream(config.clone()),
    )
    .await?;
    wait_for_leader(js, &name).await?;
    Ok(info)
}

/// Whether a request to the JetStream API timed out. The client reports it in several
/// shapes (its own kind, or a JetStream error around the request's), all saying so.
pub(crate) fn timed_out(e: &impl std::fmt::Display) -> bool {
    e.to_string().contains("timed out")
}

/// How long a request to the servers' JetStream API at start is asked again while it
/// times out.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// `request`'s answer, asked again (half a second apart, for up to [`START_PATIENCE`])
/// while it `timed_out`: a cluster's meta leader answers the creates of instances that
/// start together one after the other, and a request may time out in the queue. Other
/// errors (a refusal) end it at once, described as `what`.
pub(crate) async fn patiently<T, E, F>(
    what: &str,
    timed_out: impl Fn(&E) -> bool,
    mut request: impl FnMut() -> F,
) -> LogResult<T>
where
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + START_PATIENCE;
    loop {
        match request().await {
            Ok(v) => return Ok(v),
            Err(e) if timed_out(&e) && tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %e, "{what}; asking again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(unavailable(what, e)),
        }
    }
}

/// Waits (bounded) until a replicated stream has elected its leader: until then the
/// cluster refuses its appends, and the broker is not ready.
async fn wait_for_leader(js: &jetstream::Context, name: &str) -> LogResult<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let info = match js.get_stream_no_info(name).await {
            Ok(stream) => stream.get_info().await.ok(),
            Err(_) => None,
        };
        let led = info.is_some_and(|i| i.cluster.is_none_or(|c| c.leader.is_some()));
        if led {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(LogError::Unavailable(format!(
                "stream {name} has no leader after 30 s: are enough of the servers up for its replicas?"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads each broker's last sequence every [`HEAD_POLL`], so that the head moves with
/// other instances' appends too.
async fn follow_heads(events: Arc<JetStreamEvents>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(HEAD_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        for broker in &events.brokers {
            if let (Ok(last), Ok(s)) = (events.last_sequence(broker).await, events.stream(broker)) {
                s.head.send_if_modified(|h| {
                    let moved = last > *h;
                    *h = (*h).max(last);
                    moved
                });
            }
        }
    }
}

impl super::EventBackend for JetStreamEvents {
    fn brokers(&self) -> &[Arc<str>] {
        &self.brokers
    }

    fn append(
        &self,
        broker: Arc<str>,
        appends: Vec<Append>,
    ) -> BoxFuture<'_, Result<Vec<AppendOutcome>, Arc<LogError>>> {
        Box::pin(async move { self.publish(&broker, appends).await.map_err(Arc::new) })
    }

    fn head(&self, broker: &str) -> Option<u64> {
        self.streams.get(broker).map(|s| *s.head.borrow())
    }

    fn watch(&self, broker: &str) -> Option<watch::Receiver<u64>> {
        self.streams.get(broker).map(|s| s.head.subscribe())
    }

    fn take_fresh(&self, _broker: &str, _from: u64, _limit: usize) -> Vec<Arc<LogRecord>> {
        Vec::new()
    }

    fn read<'a>(
        &'a self,
        broker: &'a str,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'a, LogResult<Vec<LogRecord>>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let mut next = from;
            while out.len() < limit {
                let want = (limit - out.len()).min(READ_BATCH);
                let batch = self.read_batch(broker, next, want).await?;
                let Some(last) = batch.last().map(|r| r.seq) else {
                    break;
                };
                let short = batch.len() < want;
                out.extend(batch);
                next = last + 1;
                if short {
                    break;
                }
            }
            // A replica answers reads, and one that is catching up (after a leader
            // change, or just after an append) has not got the newest records yet:
            // what is missing below the acknowledged head is "not yet", not "gone".
            // Asked again for a while, then nothing read at all is an error.
            let head = self.head(broker).unwrap_or(0);
            let mut tries = 0;
            while out.len() < limit && next <= head && tries < CATCH_UP_TRIES {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let want = (limit - out.len()).min(READ_BATCH);
                let batch = self.read_batch(broker, next, want).await?;
                if let Some(last) = batch.last().map(|r| r.seq) {
                    next = last + 1;
                    out.extend(batch);
                }
            }
            if out.is_empty() && from <= head {
                let state = self.stream_info(broker).await?.state;
                if state.messages > 0 && from <= state.last_sequence {
                    return Err(LogError::Unavailable(format!(
                        "stream {}: records from {from} are not readable yet (a replica is catching up)",
                        self.stream(broker)?.name
                    )));
                }
            }
            Ok(out)
        })
    }

    fn seq_at_time<'a>(
        &'a self,
        broker: &'a str,
        unix_nanos: u64,
    ) -> BoxFuture<'a, LogResult<u64>> {
        Box::pin(async move {
            let state = self.stream_info(broker).await?.state;
            let (mut lo, mut hi) = (state.first_sequence.max(1), state.last_sequence + 1);
            // Arrival times grow with sequence numbers: the first record at or after
            // `mid` decides which half holds the answer.
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                match self.arrival_at(broker, mid).await? {
                    Some((_, t)) if t >= unix_nanos => hi = mid,
                    Some((seq, _)) => lo = seq.max(mid) + 1,
                    None => hi = mid,
                }
            }
            Ok(lo)
        })
    }

    fn stats<'a>(&'a self, broker: &'a str) -> BoxFuture<'a, LogResult<BrokerStats>> {
        Box::pin(async move {
            let state = self.stream_info(broker).await?.state;
            let oldest = if state.messages == 0 {
                None
            } else {
                self.arrival_at(broker, state.first_sequence)
                    .await?
                    .map(|(_, t)| t)
            };
            Ok(BrokerStats {
                stored: Stored {
                    events: state.messages,
                    bytes: state.bytes,
                },
                oldest_arrival: oldest,
                ..BrokerStats::default()
            })
        })
    }

    fn disk_bytes(&self) -> BoxFuture<'_, LogResult<u64>> {
        Box::pin(async move {
            let mut total = 0;
            for b in &self.brokers {
                total += self.stream_info(b).await?.state.bytes;
            }
            Ok(total)
        })
    }

    fn refusing_appends(&self) -> BoxFuture<'_, Option<String>> {
        Box::pin(async move {
            match self.client.connection_state() {
                async_nats::connection::State::Connected => None,
                _ => Some(format!(
                    "the NATS servers cannot be reached ({})",
                    self.servers
                )),
            }
        })
    }
}

/// The dead letters of every broker on JetStream: stream `<prefix>-deadletters`, one
/// message (the letter as JSON) per letter, its sequence the letter's id. The stream's
/// own limits keep the store's bounds (`maxCount` as its message limit, the oldest
/// going first, and `maxAge`), and a letter is durable once JetStream acknowledged it.
pub struct JetStreamDeadLetters {
    client: async_nats::Client,
    js: jetstream::Context,
    name: String,
    subject: String,
}

impl JetStreamEvents {
    /// The dead-letter store beside these events, on the same connection: its stream
    /// is created, or updated to the bounds (zero: none).
    pub async fn dead_letters(
        &self,
        options: &JetStreamOptions,
        max_count: u64,
        max_age: Duration,
    ) -> LogResult<JetStreamDeadLetters> {
        let name = format!("{}-deadletters", options.stream_prefix);
        let subject = format!("{}.deadletters", options.stream_prefix);
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            num_replicas: options.replicas.max(1),
            allow_direct: true,
            discard: stream::DiscardPolicy::Old,
            max_messages: if max_count == 0 {
                -1
            } else {
                i64::try_from(max_count).unwrap_or(i64::MAX)
            },
            max_age,
            ..Default::default()
        };
        ensure_stream(&self.js, config).await?;
        Ok(JetStreamDeadLetters {
            client: self.client.clone(),
            js: self.js.clone(),
            name,
            subject,
        })
    }
}

impl JetStreamDeadLetters {
    async fn stream(&self) -> LogResult<stream::Stream<()>> {
        self.js
            .get_stream_no_info(&self.name)
            .await
            .map_err(|e| unavailable(&format!("stream {}", self.name), e))
    }

    async fn state(&self) -> LogResult<stream::State> {
        Ok(self
            .stream()
            .await?
            .get_info()
            .await
            .map_err(|e| unavailable(&format!("stream {}", self.name), e))?
            .state)
    }
}

fn letter(payload: &[u8]) -> Option<super::DeadLetter> {
    serde_json::from_slice(payload).ok()
}

impl super::DeadLetterBackend for JetStreamDeadLetters {
    fn store<'a>(&'a self, letter: &'a super::DeadLetter) -> BoxFuture<'a, LogResult<u64>> {
        Box::pin(async move {
            let json = serde_json::to_vec(letter).map_err(std::io::Error::other)?;
            let m = Outgoing {
                subject: self.subject.clone(),
                payload: Bytes::from(json),
                id: None,
            };
            let first = m.send(&self.js).await?.await;
            Ok(m.settle(&self.js, first).await?.sequence)
        })
    }

    fn list(&self) -> BoxFuture<'_, LogResult<Vec<(u64, super::DeadLetter)>>> {
        Box::pin(async move {
            let state = self.state().await?;
            let mut out = Vec::new();
            let mut next = state.first_sequence.max(1);
            while next <= state.last_sequence {
                let batch = raw_batch(&self.client, &self.name, next, READ_BATCH).await?;
                let Some(last) = batch.last().map(|(seq, _)| *seq) else {
                    break;
                };
                out.extend(
                    batch
                        .into_iter()
                        .filter_map(|(id, p)| Some((id, letter(&p)?))),
                );
                next = last + 1;
            }
            Ok(out)
        })
    }

    fn get(&self, id: u64) -> BoxFuture<'_, LogResult<Option<super::DeadLetter>>> {
        Box::pin(async move {
            let found = raw_batch(&self.client, &self.name, id, 1).await?;
            Ok(found
                .first()
                .filter(|(seq, _)| *seq == id)
                .and_then(|(_, p)| letter(p)))
        })
    }

    fn delete(&self, id: u64) -> BoxFuture<'_, LogResult<bool>> {
        Box::pin(async move {
            let stream = self.stream().await?;
            match stream.delete_message(id).await {
                Ok(deleted) => Ok(deleted),
                Err(e) => match e.kind() {
                    // No message with that sequence (never stored, or deleted already).
                    stream::DeleteMessageErrorKind::JetStream(js)
                        if [
                            jetstream::ErrorCode::NO_MESSAGE_FOUND,
                            jetstream::ErrorCode::SEQUENCE_NOT_FOUND,
                        ]
                        .contains(&js.error_code()) =>
                    {
                        Ok(false)
                    }
                    // The servers' answer for one deleted already, and for other
                    // failures: which it was, the stream tells.
                    stream::DeleteMessageErrorKind::JetStream(js)
                        if js.error_code()
                            == jetstream::ErrorCode::STREAM_MESSAGE_DELETE_FAILED =>
                    {
                        match self.get(id).await? {
                            None => Ok(false),
                            Some(_) => Err(unavailable("cannot delete the dead letter", e)),
                        }
                    }
                    _ => Err(unavailable("cannot delete the dead letter", e)),
                },
            }
        })
    }

    fn count(&self) -> BoxFuture<'_, LogResult<u64>> {
        Box::pin(async move { Ok(self.state().await?.messages) })
    }
}

#[cfg(test)]
mod tests {
    use super::without_repeats;

    #[test]
    fn an_error_said_twice_in_a_row_is_said_once() {
        assert_eq!(
            without_repeats("JetStream error: request timed out: request timed out"),
            "JetStream error: request timed out"
        );
        assert_eq!(without_repeats("a: b: a"), "a: b: a");
    }
    #[test]
    fn a_message_id_is_the_hex_sha256_of_the_key() {
        assert_eq!(super::hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        // SHA-256("abc"), FIPS 180-2's example.
        assert_eq!(
            super::message_id(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
