//! What a lane does next, decided without I/O: which entries it may start given its
//! window, what is in flight, what is parked and due, and where new entries come from
//! (the feed, or the lane store). The lane's loop (`lane.rs`) carries the decisions
//! out and reports back what happened.

use std::collections::HashMap;
use std::time::Duration;

use crate::log::LaneEntry;

/// How a delivery ended, as far as the lane's bookkeeping goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Delivered, dead-lettered or gone: the entry is removed at the next commit.
    Done,
    /// Moved to the parked set; no longer the lane's to finish.
    Parked,
    /// Shutdown came first; the entry stays pending.
    Stopped,
}

/// Where the lane takes new entries from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Nothing: the window is full, the head of an ordered lane is parked, or the lane
    /// is stopping.
    Nothing,
    /// From the feed, at most `limit` from `from` on; if the feed is off, from the lane
    /// store with the same bounds.
    Feed { from: u64, limit: usize },
    /// From the lane store, from its start: after a put-back, or as the periodic check.
    /// The feed is turned off first. `limit` covers the entries in flight and finished
    /// but not yet committed too, which the read returns again.
    Reread { limit: usize },
}

/// A lane's scheduling state.
#[derive(Debug)]
pub struct Schedule {
    window: usize,
    ordered: bool,
    /// Entries in flight, by sequence.
    busy: HashMap<u64, LaneEntry>,
    /// Finished entries not yet committed.
    done: Vec<LaneEntry>,
    /// The earliest due time still parked.
    next_parked: Option<u64>,
    /// The parked set must be read (at start, and after an event was parked).
    check_parked: bool,
    /// New entries are taken from just past the last one taken.
    scan_from: u64,
    /// The lane is read from its start again before the next take.
    reread: bool,
    commits: u32,
    reread_every: u32,
}

impl Schedule {
    /// A lane that may have `window` deliveries in flight (1 when `ordered`), and reads
    /// itself from the start every `reread_every` commits.
    pub fn new(window: usize, ordered: bool, reread_every: u32) -> Schedule {
        Schedule {
            window: if ordered { 1 } else { window.max(1) },
            ordered,
            busy: HashMap::new(),
            done: Vec::new(),
            next_parked: None,
            check_parked: true,
            scan_from: 0,
            reread: true,
            commits: 0,
            reread_every: reread_every.max(1),
        }
    }

    /// The sequences in flight.
    pub fn busy(&self) -> impl Iterator<Item = u64> + '_ {
        self.busy.keys().copied()
    }

    pub fn in_flight(&self) -> usize {
        self.busy.len()
    }

    /// Whether the parked set must be read now: at start, after a park, or when the
    /// earliest parked entry is due.
    pub fn must_unpark(&self, now: u64) -> bool {
        self.check_parked || self.next_parked.is_some_and(|due| due <= now)
    }

    /// The parked set was read: `back` entries came back, the next is due at `next`.
    pub fn unparked(&mut self, back: usize, next: Option<u64>) {
        self.next_parked = next;
        self.check_parked = false;
        // They may be below where the lane has read.
        self.reread |= back > 0;
    }

    /// Where to take new entries from, if anywhere.
    pub fn take(&mut self, stopping: bool) -> Take {
        let room = self.window.saturating_sub(self.busy.len());
        // An ordered lane waits for a parked head of line.
        let blocked = self.ordered && self.next_parked.is_some();
        if room == 0 || blocked || stopping {
            return Take::Nothing;
        }
        if std::mem::take(&mut self.reread) {
            self.scan_from = 0;
            return Take::Reread {
                limit: room + self.busy.len() + self.done.len(),
            };
        }
        Take::Feed {
            from: self.scan_from,
            limit: room,
        }
    }

    /// How many entries the lane may start now (a shared lane takes exactly these
    /// from its backend: what it takes, it claims).
    pub fn room(&self, stopping: bool) -> usize {
        let blocked = self.ordered && self.next_parked.is_some();
        if blocked || stopping {
            0
        } else {
            self.window.saturating_sub(self.busy.len())
        }
    }

    /// A record the feed handed over: whether to start its delivery.
    pub fn admit_fed(&mut self, seq: u64) -> bool {
        self.scan_from = self.scan_from.max(seq + 1);
        if self.busy.contains_key(&seq) || self.busy.len() >= self.window {
            return false;
        }
        self.done.retain(|d| d.seq != seq);
        self.busy.insert(seq, LaneEntry::routed(seq));
        true
    }

    /// Entries read from the lane store from the point [`Schedule::take`] named, with
    /// the `limit` asked for: which to start, and whether the read caught up with the
    /// lane (every entry from there on was read and none left unstarted), so the feed
    /// may take over.
    pub fn admit_read(&mut self, entries: Vec<LaneEntry>, limit: usize) -> (Vec<LaneEntry>, bool) {
        let mut caught_up = entries.len() < limit;
        let mut start = Vec::new();
        for entry in entries {
            if self.busy.len() >= self.window {
                caught_up = false;
                break;
            }
            let seq = entry.seq;
            self.scan_from = self.scan_from.max(seq + 1);
            // A finished entry whose stamp changed was put back: send it again.
            let finished = self
                .done
                .iter()
                .any(|d| d.seq == seq && d.stamp == entry.stamp);
            if self.busy.contains_key(&seq) || finished {
                if self.ordered {
                    // Nothing after it may go first.
                    caught_up = false;
                    break;
                }
                continue;
            }
            self.done.retain(|d| d.seq != seq);
            self.busy.insert(seq, entry.clone());
            start.push(entry);
        }
        (start, caught_up)
    }

    /// Where the feed turns on after a read that caught up.
    pub fn scan_from(&self) -> u64 {
        self.scan_from
    }

    /// A delivery ended.
    pub fn finished(&mut self, seq: u64, how: Finished) {
        let entry = self.busy.remove(&seq);
        match how {
            Finished::Done => self.done.extend(entry),
            Finished::Parked => self.check_parked = true,
            Finished::Stopped => {}
        }
    }

    /// Entries were put back outside the router (a replay, a redelivery, a backfill):
    /// they may be below where the lane has read.
    pub fn put_back(&mut self) {
        self.reread = true;
    }

    /// The finished entries to remove from the lane now.
    pub fn to_commit(&mut self) -> Vec<LaneEntry> {
        std::mem::take(&mut self.done)
    }

    /// The commit of `entries` failed: they are committed again next time.
    pub fn commit_failed(&mut self, entries: Vec<LaneEntry>) {
        self.done.extend(entries);
    }

    /// A commit tick passed; every `reread_every` of them the lane reads itself from the
    /// start.
    pub fn ticked(&mut self) {
        self.commits += 1;
        self.reread |= self.commits.is_multiple_of(self.reread_every);
    }

    /// How long to wait at most before looking at the parked set again: until the next
    /// is due, and at most a second, so that a wall clock that jumps is noticed.
    pub fn park_wait(&self, now: u64) -> Option<Duration> {
        self.next_parked
            .map(|due| Duration::from_nanos(due.saturating_sub(now)).min(Duration::from_secs(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, attempts: u32, stamp: u64) -> LaneEntry {
        LaneEntry {
            seq,
            attempts,
            stamp,
        }
    }

    /// A lane that has started and read its store once (caught up).
    fn started(window: usize, ordered: bool) -> Schedule {
        let mut s = Schedule::new(window, ordered, 10);
        assert!(s.must_unpark(0));
        s.unparked(0, None);
        assert_eq!(
            s.take(false),
            Take::Reread {
                limit: if ordered { 1 } else { window }
            }
        );
        assert_eq!(s.admit_read(vec![], 4), (vec![], true));
        s
    }

    #[test]
    fn what_a_lane_takes_next() {
        // (window, ordered, in flight, parked due at (None: none), stopping) → take
        struct Case {
            window: usize,
            ordered: bool,
            in_flight: &'static [u64],
            parked_due: Option<u64>,
            stopping: bool,
            want: Take,
        }
        let cases = [
            Case {
                window: 4,
                ordered: false,
                in_flight: &[],
                parked_due: None,
                stopping: false,
                want: Take::Feed { from: 0, limit: 4 },
            },
            Case {
                window: 4,
                ordered: false,
                in_flight: &[1, 2],
                parked_due: None,
                stopping: false,
                want: Take::Feed { from: 3, limit: 2 },
            },
            Case {
                window: 2,
                ordered: false,
                in_flight: &[1, 2],
                parked_due: None,
                stopping: false,
                want: Take::Nothing,
            },
            Case {
                window: 4,
                ordered: false,
                in_flight: &[],
                parked_due: None,
                stopping: true,
                want: Take::Nothing,
            },
            // A parked entry does not hold an unordered lane back...
            Case {
                window: 4,
                ordered: false,
                in_flight: &[],
                parked_due: Some(50),
                stopping: false,
                want: Take::Feed { from: 0, limit: 4 },
            },
            // ...but an ordered lane waits for its parked head of line.
            Case {
                window: 4,
                ordered: true,
                in_flight: &[],
                parked_due: Some(50),
                stopping: false,
                want: Take::Nothing,
            },
            Case {
                window: 4,
                ordered: true,
                in_flight: &[],
                parked_due: None,
                stopping: false,
                want: Take::Feed { from: 0, limit: 1 },
            },
            Case {
                window: 4,
                ordered: true,
                in_flight: &[7],
                parked_due: None,
                stopping: false,
                want: Take::Nothing,
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            let mut s = started(c.window, c.ordered);
            for &seq in c.in_flight {
                assert!(s.admit_fed(seq), "case {i}: admits {seq}");
            }
            if let Some(due) = c.parked_due {
                // An entry that was never in flight here parked.
                s.finished(0, Finished::Parked);
                assert!(s.must_unpark(0), "case {i}: a park makes the lane look");
                s.unparked(0, Some(due));
            }
            assert_eq!(s.take(c.stopping), c.want, "case {i}");
        }
    }

    #[test]
    fn parked_entries_are_read_when_due_and_bring_a_reread() {
        let mut s = started(4, false);
        assert!(!s.must_unpark(100));
        assert!(s.admit_fed(1));
        s.finished(1, Finished::Parked);
        assert!(
            s.must_unpark(100),
            "a park makes the lane read the parked set"
        );
        s.unparked(0, Some(500));
        assert!(!s.must_unpark(499));
        assert!(s.must_unpark(500));
        assert_eq!(s.park_wait(200), Some(Duration::from_nanos(300)));
        assert_eq!(
            s.park_wait(0).map(|d| d <= Duration::from_secs(1)),
            Some(true)
        );
        // Due entries came back: they may lie below where the lane read.
        s.unparked(1, None);
        assert_eq!(s.park_wait(600), None);
        assert!(matches!(s.take(false), Take::Reread { .. }));
    }

    #[test]
    fn a_read_starts_what_fits_and_says_whether_it_caught_up() {
        // (window, ordered, in flight, finished-uncommitted, read, limit) → started, caught up
        type Row = (
            usize,
            bool,
            &'static [u64],
            &'static [(u64, u64)],
            &'static [(u64, u32, u64)],
            usize,
            &'static [u64],
            bool,
        );
        let rows: &[Row] = &[
            // Fewer than asked: the lane is caught up.
            (
                4,
                false,
                &[],
                &[],
                &[(1, 0, 0), (2, 0, 0)],
                4,
                &[1, 2],
                true,
            ),
            // As many as asked: there may be more.
            (
                2,
                false,
                &[],
                &[],
                &[(1, 0, 0), (2, 0, 0)],
                2,
                &[1, 2],
                false,
            ),
            // The window fills before the read ends.
            (
                2,
                false,
                &[],
                &[],
                &[(1, 0, 0), (2, 0, 0), (3, 0, 0)],
                5,
                &[1, 2],
                false,
            ),
            // In flight already: skipped.
            (
                4,
                false,
                &[2],
                &[],
                &[(1, 0, 0), (2, 0, 0), (3, 0, 0)],
                5,
                &[1, 3],
                true,
            ),
            // Finished, not yet committed, same stamp: skipped.
            (
                4,
                false,
                &[],
                &[(2, 0)],
                &[(1, 0, 0), (2, 0, 0)],
                5,
                &[1],
                true,
            ),
            // Finished, but put back since (a new stamp): sent again.
            (4, false, &[], &[(2, 0)], &[(2, 0, 9)], 5, &[2], true),
            // An ordered lane stops at an entry still in flight or uncommitted.
            (
                1,
                true,
                &[],
                &[(1, 0)],
                &[(1, 0, 0), (2, 0, 0)],
                5,
                &[],
                false,
            ),
        ];
        for (i, &(window, ordered, busy, done, read, limit, want, caught)) in
            rows.iter().enumerate()
        {
            let mut s = started(window, ordered);
            for &seq in busy {
                s.admit_fed(seq);
            }
            for &(seq, stamp) in done {
                s.busy.insert(seq, entry(seq, 0, stamp));
                s.finished(seq, Finished::Done);
            }
            let read: Vec<LaneEntry> = read.iter().map(|&(q, a, st)| entry(q, a, st)).collect();
            let (started, caught_up) = s.admit_read(read, limit);
            let seqs: Vec<u64> = started.iter().map(|e| e.seq).collect();
            assert_eq!((seqs.as_slice(), caught_up), (want, caught), "row {i}");
        }
    }

    #[test]
    fn finished_entries_are_committed_once_and_kept_when_the_commit_fails() {
        let mut s = started(4, false);
        for seq in [1, 2, 3] {
            assert!(s.admit_fed(seq));
        }
        s.finished(1, Finished::Done);
        s.finished(2, Finished::Stopped);
        assert_eq!(s.in_flight(), 1);
        let batch = s.to_commit();
        assert_eq!(batch.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);
        assert!(s.to_commit().is_empty());
        s.commit_failed(batch);
        assert_eq!(s.to_commit().len(), 1, "a failed commit is tried again");
    }

    #[test]
    fn put_backs_and_every_tenth_commit_reread_the_lane_from_its_start() {
        let mut s = started(4, false);
        assert!(s.admit_fed(5));
        assert_eq!(s.take(false), Take::Feed { from: 6, limit: 3 });
        s.put_back();
        assert_eq!(s.take(false), Take::Reread { limit: 4 });
        assert_eq!(s.take(false), Take::Feed { from: 0, limit: 3 });
        for _ in 0..9 {
            s.ticked();
        }
        assert!(matches!(s.take(false), Take::Feed { .. }));
        s.ticked();
        assert!(matches!(s.take(false), Take::Reread { .. }));
    }

    #[test]
    fn the_feed_skips_what_is_in_flight_and_never_overfills_the_window() {
        let mut s = started(2, false);
        assert!(s.admit_fed(1));
        assert!(!s.admit_fed(1), "already in flight");
        assert!(s.admit_fed(2));
        assert!(!s.admit_fed(3), "the window is full");
        assert_eq!(s.scan_from(), 4);
    }
}
