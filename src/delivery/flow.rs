//! Flow control of one lane, as pure decisions: a token bucket (`delivery.rateLimit`) and
//! a circuit breaker (`delivery.circuitBreaker`). Each takes the time as an argument and
//! does no I/O; the lane's deliverer asks them before every attempt and tells the breaker
//! how each attempt ended.
//!
//! The breaker counts consecutive failed attempts (an answer that is retried or final,
//! no answer at all). At the threshold it opens: no attempts for its cooldown. Then one
//! attempt goes out as a probe (half-open); its success closes the breaker, its failure
//! opens it again with the cooldown doubled, up to a cap. Attempts that wait on the
//! breaker or the bucket are not made, so they spend none of an event's retries.

use std::time::Duration;

/// A token bucket: `per_second` tokens a second, at most `burst` held; one token per
/// attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    /// When `tokens` was last brought up to date (ns).
    at: u64,
}

impl Bucket {
    /// A full bucket at `now` (ns).
    pub fn new(per_second: f64, burst: u32, now: u64) -> Bucket {
        let burst = f64::from(burst.max(1));
        Bucket {
            per_second,
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: u64) {
        if now > self.at {
            let elapsed = (now - self.at) as f64 / 1e9;
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
            self.at = now;
        }
    }

    /// Takes a token at `now`: `Ok` when there was one, else how long until there is.
    pub fn take(&mut self, now: u64) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            // A rate too small for a Duration waits a day, then asks again.
            Err(
                Duration::try_from_secs_f64((1.0 - self.tokens) / self.per_second)
                    .map_or(Duration::from_secs(86_400), |d| {
                        d.min(Duration::from_secs(86_400))
                    }),
            )
        }
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Attempts go out; `failures` in a row so far.
    Closed { failures: u32 },
    /// No attempts until `until` (ns); `cooldown` is how long this opening lasts.
    Open { until: u64, cooldown: Duration },
    /// One probe may go out (`probing`: it has), after a cooldown of `cooldown`.
    HalfOpen { cooldown: Duration, probing: bool },
}

impl State {
    /// The name the metrics, the admin API and the CLI use.
    pub fn name(&self) -> &'static str {
        match self {
            State::Closed { .. } => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half-open",
        }
    }
}

/// What the breaker says about an attempt now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Make it.
    Go,
    /// Make it as the probe: its outcome decides.
    Probe,
    /// Do not; ask again after this long (the rest of the cooldown), or, while a probe
    /// is out, when it has ended (`None`).
    Wait(Option<Duration>),
}

/// A change of state, to be logged once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened { cooldown: Duration },
    HalfOpened,
    Closed,
}

/// A lane's circuit breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    max_cooldown: Duration,
    state: State,
    /// When the state last changed (ns).
    since: u64,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` failures in a row, for `cooldown`
    /// at first and at most `max_cooldown` (at least `cooldown`).
    pub fn new(threshold: u32, cooldown: Duration, max_cooldown: Duration, now: u64) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            max_cooldown: max_cooldown.max(cooldown),
            state: State::Closed { failures: 0 },
            since: now,
        }
    }

    /// The state and since when (ns).
    pub fn state(&self) -> (State, u64) {
        (self.state, self.since)
    }

    fn enter(&mut self, state: State, now: u64) {
        self.state = state;
        self.since = now;
    }

    /// Whether an attempt may go out at `now`.
    pub fn gate(&mut self, now: u64) -> (Gate, Option<Transition>) {
        match self.state {
            State::Closed { .. } => (Gate::Go, None),
            State::Open { until, cooldown } if now >= until => {
                self.enter(
                    State::HalfOpen {
                        cooldown,
                        probing: true,
                    },
                    now,
                );
                (Gate::Probe, Some(Transition::HalfOpened))
            }
            State::Open { until, .. } => {
                (Gate::Wait(Some(Duration::from_nanos(until - now))), None)
            }
            State::HalfOpen {
                cooldown,
                probing: false,
            } => {
                self.state = State::HalfOpen {
                    cooldown,
                    probing: true,
                };
                (Gate::Probe, None)
            }
            State::HalfOpen { probing: true, .. } => (Gate::Wait(None), None),
        }
    }

    /// How an attempt ended; `probe` when [`Breaker::gate`] let it out as the probe.
    pub fn record(&mut self, success: bool, probe: bool, now: u64) -> Option<Transition> {
        match (self.state, success) {
            (State::Closed { .. }, true) => {
                self.state = State::Closed { failures: 0 };
                None
            }
            (State::Closed { failures }, false) => {
                let failures = failures + 1;
                if failures >= self.threshold {
                    self.open(self.cooldown, now)
                } else {
                    self.state = State::Closed { failures };
                    None
                }
            }
            (State::HalfOpen { .. }, true) if probe => {
                self.enter(State::Closed { failures: 0 }, now);
                Some(Transition::Closed)
            }
            (State::HalfOpen { cooldown, .. }, false) if probe => {
                let doubled = cooldown.saturating_mul(2).min(self.max_cooldown);
                self.open(doubled, now)
            }
            // An attempt that went out before the breaker opened, ending now: the probe
            // decides, not it.
            _ => None,
        }
    }

    /// The probe ended without an outcome (the lane stopped): the next attempt probes.
    pub fn abandon_probe(&mut self) {
        if let State::HalfOpen { cooldown, .. } = self.state {
            self.state = State::HalfOpen {
                cooldown,
                probing: false,
            };
        }
    }

    fn open(&mut self, cooldown: Duration, now: u64) -> Option<Transition> {
        let until = now.saturating_add(u64::try_from(cooldown.as_nanos()).unwrap_or(u64::MAX));
        self.enter(State::Open { until, cooldown }, now);
        Some(Transition::Opened { cooldown })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_bucket_lets_the_burst_through_then_one_per_interval() {
        let mut b = Bucket::new(5.0, 3, 0);
        assert_eq!(b.take(0), Ok(()));
        assert_eq!(b.take(0), Ok(()));
        assert_eq!(b.take(0), Ok(()));
        assert_eq!(b.take(0), Err(Duration::from_millis(200)));
        assert_eq!(b.take(S / 10), Err(Duration::from_millis(100)));
        assert_eq!(b.take(S / 5), Ok(()));
        assert!(b.take(S / 5).is_err());
        // A long idle refills up to the burst, no more.
        let t = 100 * S;
        for _ in 0..3 {
            assert_eq!(b.take(t), Ok(()));
        }
        assert!(b.take(t).is_err());
    }

    #[test]
    fn a_bucket_holds_its_rate_over_many_takes() {
        let mut b = Bucket::new(5.0, 1, 0);
        let (mut now, mut sent) = (0u64, 0u32);
        while now <= 10 * S {
            match b.take(now) {
                Ok(()) => sent += 1,
                Err(wait) => now += wait.as_nanos() as u64,
            }
        }
        assert_eq!(sent, 51, "one at 0, then five a second for ten seconds");
    }

    #[test]
    fn the_breaker_opens_after_the_threshold_and_probes_once_per_cooldown() {
        let c = Duration::from_secs(30);
        let mut b = Breaker::new(3, c, Duration::from_secs(100), 0);
        // A success resets the count.
        assert_eq!(b.record(false, false, 0), None);
        assert_eq!(b.record(false, false, 0), None);
        assert_eq!(b.record(true, false, 0), None);
        assert_eq!(b.record(false, false, 0), None);
        assert_eq!(b.record(false, false, 0), None);
        assert_eq!(
            b.record(false, false, S),
            Some(Transition::Opened { cooldown: c })
        );
        assert_eq!(b.state().1, S);
        assert_eq!(
            b.gate(2 * S),
            (Gate::Wait(Some(Duration::from_secs(29))), None)
        );
        // The cooldown is over: one probe, and everything else waits for it.
        assert_eq!(b.gate(31 * S), (Gate::Probe, Some(Transition::HalfOpened)));
        assert_eq!(b.gate(31 * S), (Gate::Wait(None), None));
        // An attempt from before the opening ends: the probe still decides.
        assert_eq!(b.record(false, false, 32 * S), None);
        // The probe fails: open again for twice as long.
        assert_eq!(
            b.record(false, true, 33 * S),
            Some(Transition::Opened {
                cooldown: Duration::from_secs(60)
            })
        );
        assert_eq!(b.gate(92 * S).0, Gate::Wait(Some(Duration::from_secs(1))));
        assert_eq!(b.gate(93 * S).0, Gate::Probe);
        // Doubling stops at the cap.
        assert_eq!(
            b.record(false, true, 93 * S),
            Some(Transition::Opened {
                cooldown: Duration::from_secs(100)
            })
        );
        assert_eq!(b.gate(193 * S).0, Gate::Probe);
        // A probe that ends without an outcome hands the probe to the next attempt.
        b.abandon_probe();
        assert_eq!(b.gate(193 * S), (Gate::Probe, None));
        assert_eq!(b.record(true, true, 194 * S), Some(Transition::Closed));
        assert_eq!(b.state(), (State::Closed { failures: 0 }, 194 * S));
        assert_eq!(b.gate(194 * S), (Gate::Go, None));
        // Closed again, it opens with the first cooldown.
        for _ in 0..2 {
            b.record(false, false, 195 * S);
        }
        assert_eq!(
            b.record(false, false, 195 * S),
            Some(Transition::Opened { cooldown: c })
        );
    }

    #[test]
    fn state_names_are_the_ones_the_metrics_use() {
        assert_eq!(State::Closed { failures: 2 }.name(), "closed");
        assert_eq!(
            State::Open {
                until: 0,
                cooldown: Duration::ZERO
            }
            .name(),
            "open"
        );
        assert_eq!(
            State::HalfOpen {
                cooldown: Duration::ZERO,
                probing: false
            }
            .name(),
            "half-open"
        );
    }
}
