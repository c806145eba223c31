//! Retry decisions as pure functions: is an attempt's result a success, worth retrying,
//! or final; how long to wait before retry n; what a `Retry-After` header asks for.
//! No I/O and no clock: the caller passes the time and the jitter sample.

use std::time::{Duration, SystemTime};

use crate::config::BackoffPolicy;

/// What one attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The sink answered with this status.
    Status(u16),
    /// No connection could be made (refused, DNS, TLS handshake).
    ConnectError,
    /// No answer within `delivery.timeout`.
    Timeout,
    /// The connection broke after the request went out (reset, truncated answer).
    Broken,
    /// The sink's address is one the broker does not send to (a cloud metadata
    /// address, or its own admin listener); nothing was sent.
    Refused,
    /// The event cannot be put into a request (too many headers); nothing was sent.
    Unsendable,
    /// The sink's token could not be had (its OAuth2 endpoint failed, its file is
    /// unreadable); nothing was sent.
    Credentials,
}

/// What to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// Worth trying again.
    Retry,
    /// Trying again cannot help: dead-letter now.
    Permanent,
}

/// Classifies an attempt: any 2xx succeeds; connect errors, timeouts, broken
/// connections, 404, 408, 409, 429 and 5xx are retried; other 4xx and 3xx (redirects are
/// not followed) and refused addresses are final.
pub fn classify(attempt: Attempt) -> Verdict {
    match attempt {
        Attempt::Status(s) if (200..300).contains(&s) => Verdict::Success,
        Attempt::Status(404 | 408 | 409 | 429) => Verdict::Retry,
        Attempt::Status(s) if (500..600).contains(&s) => Verdict::Retry,
        Attempt::Status(_) | Attempt::Refused | Attempt::Unsendable => Verdict::Permanent,
        Attempt::ConnectError | Attempt::Timeout | Attempt::Broken | Attempt::Credentials => {
            Verdict::Retry
        }
    }
}

/// The backoff before retry `n` (1-based): linear `delay·n`, exponential
/// `delay·2^(n-1)`, capped by `max`, then scaled by `jitter` in `[0.5, 1.0]` taken from
/// `sample` in `[0, 1)` ("equal jitter": never less than half the nominal wait).
pub fn backoff(
    policy: BackoffPolicy,
    delay: Duration,
    max: Duration,
    n: u32,
    sample: f64,
) -> Duration {
    let n = n.max(1);
    let nominal = match policy {
        BackoffPolicy::Linear => delay.saturating_mul(n),
        BackoffPolicy::Exponential => delay.saturating_mul(2u32.saturating_pow((n - 1).min(31))),
    };
    let capped = if max.is_zero() {
        nominal
    } else {
        nominal.min(max)
    };
    capped.mul_f64(0.5 + 0.5 * sample.clamp(0.0, 1.0))
}

/// Parses `Retry-After`: delay-seconds or an HTTP date (RFC 9110, 10.2.3), relative to
/// `now`. A date in the past is zero; anything unreadable is `None`.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The wait before the next attempt: the backoff, raised by a `Retry-After` on 429 and
/// 503 up to `retry_after_max`.
pub fn next_wait(
    backoff: Duration,
    status: Option<u16>,
    retry_after: Option<Duration>,
    retry_after_max: Duration,
) -> Duration {
    match (status, retry_after) {
        (Some(429 | 503), Some(asked)) => backoff.max(asked.min(retry_after_max)),
        _ => backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        let table = [
            (Attempt::Status(200), Verdict::Success),
            (Attempt::Status(202), Verdict::Success),
            (Attempt::Status(204), Verdict::Success),
            (Attempt::Status(299), Verdict::Success),
            (Attempt::Status(301), Verdict::Permanent),
            (Attempt::Status(307), Verdict::Permanent),
            (Attempt::Status(400), Verdict::Permanent),
            (Attempt::Status(401), Verdict::Permanent),
            (Attempt::Status(403), Verdict::Permanent),
            (Attempt::Status(404), Verdict::Retry),
            (Attempt::Status(408), Verdict::Retry),
            (Attempt::Status(409), Verdict::Retry),
            (Attempt::Status(410), Verdict::Permanent),
            (Attempt::Status(413), Verdict::Permanent),
            (Attempt::Status(422), Verdict::Permanent),
            (Attempt::Status(429), Verdict::Retry),
            (Attempt::Status(500), Verdict::Retry),
            (Attempt::Status(502), Verdict::Retry),
            (Attempt::Status(503), Verdict::Retry),
            (Attempt::Status(599), Verdict::Retry),
            (Attempt::ConnectError, Verdict::Retry),
            (Attempt::Timeout, Verdict::Retry),
            (Attempt::Broken, Verdict::Retry),
        ];
        for (attempt, verdict) in table {
            assert_eq!(classify(attempt), verdict, "{attempt:?}");
        }
    }

    #[test]
    fn backoff_grows_as_the_policy_says_and_is_capped() {
        let ms = Duration::from_millis;
        let max = Duration::from_secs(5);
        // sample 1.0 gives the nominal wait.
        let exp: Vec<Duration> = (1..=7)
            .map(|n| backoff(BackoffPolicy::Exponential, ms(200), max, n, 1.0))
            .collect();
        assert_eq!(
            exp,
            [
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(5000),
                ms(5000)
            ]
        );
        let lin: Vec<Duration> = (1..=4)
            .map(|n| backoff(BackoffPolicy::Linear, ms(200), max, n, 1.0))
            .collect();
        assert_eq!(lin, [ms(200), ms(400), ms(600), ms(800)]);
        // Jitter stays within half to all of the nominal wait.
        assert_eq!(
            backoff(BackoffPolicy::Exponential, ms(200), max, 3, 0.0),
            ms(400)
        );
        assert_eq!(
            backoff(BackoffPolicy::Linear, ms(200), max, 1, 0.5),
            ms(150)
        );
        // No overflow for huge n.
        assert_eq!(
            backoff(BackoffPolicy::Exponential, ms(200), max, 1000, 1.0),
            max
        );
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(" 2 ", now), Some(Duration::from_secs(2)));
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }

    #[test]
    fn retry_after_raises_the_wait_on_429_and_503_only_up_to_the_cap() {
        let s = Duration::from_secs;
        assert_eq!(next_wait(s(1), Some(429), Some(s(30)), s(600)), s(30));
        assert_eq!(next_wait(s(1), Some(503), Some(s(3600)), s(600)), s(600));
        assert_eq!(next_wait(s(10), Some(503), Some(s(2)), s(600)), s(10));
        assert_eq!(next_wait(s(1), Some(500), Some(s(30)), s(600)), s(1));
        assert_eq!(next_wait(s(1), None, None, s(600)), s(1));
    }
}
