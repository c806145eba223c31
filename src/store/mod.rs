//! What the broker keeps on its own disk: the embedded store. Blocking code, no async
//! runtime, no metrics; the log module runs it off the async threads and is
//! the only part that calls it.
//!
//! - [`events`]: each broker's events in append-only segment files, their index, the
//!   in-memory dedupe index, and the record encoding (`switchyard.v1.Record`).
//! - [`lanes`]: every lane's pending and parked entries, the router's cursor and the
//!   subscriptions' routing states, in memory and kept by an append-only journal.
//! - [`dead_letters`]: the dead letters, in sled (the one part that uses it).
//! - [`embedded`]: [`Store`], which opens the three in one data directory, makes a
//!   group durable, tracks damage, and syncs the parts in an order that never keeps a
//!   lane's progress without what it depends on.
//!
//! The types below are the store's data model; the log passes them through its handles
//! unchanged, and no segment, journal or sled type leaves this module.

pub mod dead_letters;
pub mod embedded;
pub mod events;
pub mod lanes;
pub mod pauses;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::event::Event;
pub use embedded::Store;
pub use events::record::LogRecord;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The dead-letter store failed; the text is sled's.
    #[error("dead-letter store error: {0}")]
    DeadLetters(String),
    #[error("{0}")]
    Lanes(#[from] lanes::LanesError),
    #[error("unknown broker '{0}'")]
    UnknownBroker(String),
}

/// How appends are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every group is synced before any of its requests is answered.
    Fsync,
    /// Groups are synced with the progress, every 100 ms; a crash can lose what was
    /// acknowledged in that time.
    Relaxed,
}

/// Settings of the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The data directory.
    pub path: PathBuf,
    pub durability: Durability,
    /// sled's page cache for the dead letters, in bytes.
    pub cache_capacity: u64,
    pub dedupe_window_nanos: u64,
}

/// What happened to one appended event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored at this sequence number.
    Stored(u64),
    /// A duplicate of the event stored at this sequence number, inside the dedupe window.
    Duplicate(u64),
}

/// One event to append: its encoded record and, when dedupe is on, its dedupe key.
#[derive(Debug, Clone)]
pub struct Append {
    pub record: Bytes,
    pub dedupe_key: Option<Vec<u8>>,
    /// What the record holds, decoded, when the caller has it: once stored, it is
    /// handed to the router (the log's fresh records) so that the record need not be read back.
    pub decoded: Option<Decoded>,
}

/// The content of a record, decoded: a [`LogRecord`] without its place in the log.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub arrival_unix_nanos: u64,
    pub hops: u32,
    pub event: Event,
}

/// The appends of one request, all to one broker.
#[derive(Debug)]
pub struct GroupEntry {
    pub broker: Arc<str>,
    pub appends: Vec<Append>,
}

/// Records a log found damaged: `corrupt` ones do not decode and are skipped where
/// they are read; `lost` ones were stored before the last start but were not there when
/// it opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Damage {
    pub corrupt: u64,
    pub lost: u64,
}

/// What retention deleted in one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    /// Events older than the age bound.
    pub by_age: usize,
    /// Events deleted to bring the log under the size bound.
    pub by_size: usize,
    /// Record bytes freed.
    pub bytes: u64,
}

/// What a broker's log holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    pub events: u64,
    /// The records' bytes (what `storage.retention.maxBytes` bounds).
    pub bytes: u64,
}

/// A lane: one sink of one subscription. Its pending entries are sequence numbers of
/// the broker's log.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LaneId {
    pub subscription: String,
    pub sink: String,
}

impl LaneId {
    pub fn new(subscription: impl Into<String>, sink: impl Into<String>) -> Self {
        LaneId {
            subscription: subscription.into(),
            sink: sink.into(),
        }
    }

    /// The key prefix of the lane's entries: `subscription \0 sink \0`. Neither part
    /// can hold a NUL (names are DNS-like, sinks are URIs).
    pub fn key_prefix(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.subscription.len() + self.sink.len() + 2);
        k.extend_from_slice(self.subscription.as_bytes());
        k.push(0);
        k.extend_from_slice(self.sink.as_bytes());
        k.push(0);
        k
    }
}

/// A pending lane entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneEntry {
    pub seq: u64,
    /// Attempts made so far (from a parked retry).
    pub attempts: u32,
    /// Which copy of the entry this is (0 for the router's; put-backs and parked
    /// retries that came back get a fresh one), so that finishing removes this entry
    /// and not a newer one.
    pub stamp: u64,
}

impl LaneEntry {
    /// An entry as the router makes it.
    pub fn routed(seq: u64) -> LaneEntry {
        LaneEntry {
            seq,
            attempts: 0,
            stamp: 0,
        }
    }
}

/// What a subscription's routing has reached, kept beside its lanes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubscriptionState {
    /// The sinks (lanes) it had when last reconciled.
    pub sinks: Vec<String>,
    /// A backfill still to do: `(next, end)` inclusive.
    pub backfill: Option<(u64, u64)>,
}

/// An event that could not be delivered, kept with why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetter {
    pub broker: String,
    pub subscription: String,
    pub sink: String,
    pub seq: u64,
    pub attempts: u32,
    /// The last HTTP status, when there was an answer.
    pub last_status: Option<u16>,
    pub last_error: String,
    pub time_unix_nanos: u64,
    /// The stored record (`switchyard.v1.Record`), base64, so the letter outlives retention.
    pub record: String,
    /// Whether the dead-letter sink took it.
    pub dead_letter_sink_delivered: bool,
}

/// The progress a set of routing entries completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteProgress {
    /// The router has decided every subscription up to this sequence.
    Cursor(u64),
    /// One subscription's state (a backfill step, or its first registration).
    Subscription(String, SubscriptionState),
    /// Entries that complete nothing (a replay, a redelivery).
    None,
}
