//! When to try again: the configured schedule with jitter, or the receiver's `Retry-After`.

use std::time::Duration;

use rand::Rng as _;
use time::format_description::StaticFormatDescription;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use crate::config::RetrySchedule;

/// How retries are spaced.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Delays before each retry.
    pub schedule: RetrySchedule,
    /// Random spread of each delay, in percent.
    pub jitter_percent: u8,
    /// Longest `Retry-After` honoured.
    pub retry_after_max: Duration,
}

impl RetryPolicy {
    /// The delay after the `attempts`-th failed attempt, or `None` when the retries are used up.
    ///
    /// A `Retry-After` from the receiver can only push the retry later than the schedule (up
    /// to `retry_after_max`), never earlier: a proxy answering `Retry-After: 0` (or a date in
    /// the past) in front of a down receiver would otherwise burn the whole ~3-day schedule
    /// in milliseconds and dead-letter the event at once.
    pub fn next_delay(&self, attempts: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let scheduled = jitter(self.schedule.delay_after(attempts)?, self.jitter_percent);
        Some(match retry_after {
            Some(asked) => asked.min(self.retry_after_max).max(scheduled),
            None => scheduled,
        })
    }
}

/// Spreads `delay` uniformly by ±`percent`, so that receivers recovering from an outage are
/// not hit by every retry at the same instant.
fn jitter(delay: Duration, percent: u8) -> Duration {
    if percent == 0 || delay.is_zero() {
        return delay;
    }
    let factor = rand::rng().random_range(-f64::from(percent)..=f64::from(percent)) / 100.0;
    delay.mul_f64((1.0 + factor).max(0.0))
}

/// IMF-fixdate, the HTTP-date form senders must generate (RFC 9110 §5.6.7).
const IMF_FIXDATE: StaticFormatDescription = format_description!(
    "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
);

/// Parses a `Retry-After` value: delay seconds or an HTTP date. A date in the past means now.
pub fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = PrimitiveDateTime::parse(value, IMF_FIXDATE)
        .ok()?
        .assume_utc();
    let delta = at - now;
    Some(Duration::try_from(delta).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn policy(delays_ms: &[u64], jitter_percent: u8) -> RetryPolicy {
        RetryPolicy {
            schedule: RetrySchedule {
                delays: delays_ms
                    .iter()
                    .map(|ms| Duration::from_millis(*ms))
                    .collect(),
            },
            jitter_percent,
            retry_after_max: Duration::from_secs(60),
        }
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = datetime!(2026-11-22 20:00:00 UTC);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 22 Nov 2026 20:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 22 Nov 2026 19:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in ["", "-5", "soon", "1.5", "Sunday, 22-Nov-26 20:00:30 GMT"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn jitter_stays_within_its_percentage() {
        let p = policy(&[1000], 20);
        for _ in 0..200 {
            let d = p.next_delay(1, None).unwrap();
            assert!((800..=1200).contains(&d.as_millis()), "{d:?}");
        }
        assert_eq!(
            policy(&[1000], 0).next_delay(1, None),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn retry_after_postpones_the_schedule_up_to_the_maximum() {
        let p = policy(&[10, 20], 0);
        assert_eq!(
            p.next_delay(1, Some(Duration::from_secs(3))),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            p.next_delay(2, Some(Duration::from_secs(3600))),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn retry_after_zero_or_in_the_past_never_shortens_the_schedule() {
        let p = policy(&[5000, 30_000], 0);
        assert_eq!(
            p.next_delay(1, Some(Duration::ZERO)),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            p.next_delay(2, Some(Duration::from_secs(1))),
            Some(Duration::from_secs(30))
        );
        // A past HTTP date parses as zero and is treated the same way.
        let now = time::macros::datetime!(2026-11-22 20:00:00 UTC);
        let past = parse_retry_after("Sun, 22 Nov 2026 19:00:00 GMT", now);
        assert_eq!(p.next_delay(1, past), Some(Duration::from_secs(5)));
    }

    #[test]
    fn a_scheduled_delay_longer_than_the_retry_after_maximum_is_kept() {
        // retry_after_max is 60 s; the schedule's 2 minutes still wins.
        let p = policy(&[120_000], 0);
        assert_eq!(
            p.next_delay(1, Some(Duration::from_secs(3600))),
            Some(Duration::from_secs(120))
        );
    }

    #[test]
    fn retries_end_when_the_schedule_is_used_up() {
        let p = policy(&[10, 20], 0);
        assert_eq!(p.next_delay(2, None), Some(Duration::from_millis(20)));
        assert_eq!(p.next_delay(3, None), None);
        assert_eq!(p.next_delay(3, Some(Duration::from_secs(1))), None);
    }
}
