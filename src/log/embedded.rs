//! The embedded store as the log's backend.

use super::{
    AppendOutcome, Damage, DeadLetter, Expired, GroupEntry, LaneEntry, LaneId, LogBackend,
    LogError, LogRecord, RouteProgress, Stored, SubscriptionState,
};
use crate::store::Store;

impl LogBackend for Store {
    fn write_group(
        &self,
        group: &[GroupEntry],
        now_unix_nanos: u64,
    ) -> Result<Vec<Vec<AppendOutcome>>, LogError> {
        Ok(Store::write_group(self, group, now_unix_nanos)?)
    }

    fn read(&self, broker: &str, from: u64, limit: usize) -> Result<Vec<LogRecord>, LogError> {
        Ok(Store::read(self, broker, from, limit)?)
    }

    fn head(&self, broker: &str) -> Result<u64, LogError> {
        Ok(Store::head(self, broker)?)
    }

    fn expire_dedupe(
        &self,
        cutoff_unix_nanos: u64,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<usize, LogError> {
        Ok(Store::expire_dedupe(self, cutoff_unix_nanos, stop)?)
    }

    fn dedupe_entries(&self) -> usize {
        Store::dedupe_entries(self)
    }

    fn sync(&self) -> Result<(), LogError> {
        Ok(Store::sync(self)?)
    }

    fn sync_progress(&self) -> Result<(), LogError> {
        Ok(Store::sync_progress(self)?)
    }

    fn router_cursor(&self, broker: &str) -> Result<u64, LogError> {
        Ok(Store::router_cursor(self, broker)?)
    }

    fn record_routes(
        &self,
        broker: &str,
        entries: &[(LaneId, u64)],
        progress: &RouteProgress,
    ) -> Result<(), LogError> {
        Ok(Store::record_routes(self, broker, entries, progress)?)
    }

    fn subscription_states(
        &self,
        broker: &str,
    ) -> Result<Vec<(String, SubscriptionState)>, LogError> {
        Ok(Store::subscription_states(self, broker)?)
    }

    fn drop_lanes(
        &self,
        broker: &str,
        subscription: &str,
        sinks: Option<&[String]>,
    ) -> Result<usize, LogError> {
        Ok(Store::drop_lanes(self, broker, subscription, sinks)?)
    }

    fn lane_entries(
        &self,
        broker: &str,
        lane: &LaneId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<LaneEntry>, LogError> {
        Ok(Store::lane_entries(self, broker, lane, from, limit)?)
    }

    fn finish(&self, broker: &str, lane: &LaneId, entries: &[LaneEntry]) -> Result<(), LogError> {
        Ok(Store::finish(self, broker, lane, entries)?)
    }

    fn park(
        &self,
        broker: &str,
        lane: &LaneId,
        seq: u64,
        due_unix_nanos: u64,
        attempts: u32,
    ) -> Result<(), LogError> {
        Ok(Store::park(
            self,
            broker,
            lane,
            seq,
            due_unix_nanos,
            attempts,
        )?)
    }

    fn unpark_due(
        &self,
        broker: &str,
        lane: &LaneId,
        now_unix_nanos: u64,
    ) -> Result<(usize, Option<u64>), LogError> {
        Ok(Store::unpark_due(self, broker, lane, now_unix_nanos)?)
    }

    fn parked(&self, broker: &str, lane: &LaneId) -> Result<usize, LogError> {
        Ok(Store::parked(self, broker, lane)?)
    }

    fn next_parked(&self, broker: &str, lane: &LaneId) -> Result<Option<u64>, LogError> {
        Ok(Store::next_parked(self, broker, lane)?)
    }

    fn store_dead_letter(&self, letter: &DeadLetter) -> Result<u64, LogError> {
        Ok(Store::store_dead_letter(self, letter)?)
    }

    fn dead_letters(&self) -> Result<Vec<(u64, DeadLetter)>, LogError> {
        Ok(Store::dead_letters(self)?)
    }

    fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, LogError> {
        Ok(Store::dead_letter(self, id)?)
    }

    fn delete_dead_letter(&self, id: u64) -> Result<bool, LogError> {
        Ok(Store::delete_dead_letter(self, id)?)
    }

    fn expire_events(
        &self,
        broker: &str,
        cutoff_unix_nanos: u64,
        free_bytes: u64,
        limit: usize,
    ) -> Result<Expired, LogError> {
        Ok(Store::expire_events(
            self,
            broker,
            cutoff_unix_nanos,
            free_bytes,
            limit,
        )?)
    }

    fn stored(&self, broker: &str) -> Result<Stored, LogError> {
        Ok(Store::stored(self, broker)?)
    }

    fn oldest_arrival(&self, broker: &str) -> Result<Option<u64>, LogError> {
        Ok(Store::oldest_arrival(self, broker)?)
    }

    fn disk_bytes(&self) -> Result<u64, LogError> {
        Ok(Store::disk_bytes(self)?)
    }

    fn damage(&self, broker: &str) -> Damage {
        Store::damage(self, broker)
    }

    fn dead_letter_count(&self) -> Result<usize, LogError> {
        Ok(Store::dead_letter_count(self)?)
    }

    fn expire_dead_letters(
        &self,
        max_count: u64,
        cutoff_unix_nanos: u64,
    ) -> Result<usize, LogError> {
        Ok(Store::expire_dead_letters(
            self,
            max_count,
            cutoff_unix_nanos,
        )?)
    }

    fn lane_depth(&self, broker: &str, lane: &LaneId) -> Result<u64, LogError> {
        Ok(Store::lane_depth(self, broker, lane)?)
    }

    fn seq_at_time(&self, broker: &str, unix_nanos: u64) -> Result<u64, LogError> {
        Ok(Store::seq_at_time(self, broker, unix_nanos)?)
    }
}
