//! Recording an outcome again after a database error, for as long as the lease that makes the
//! outcome ours still holds.
//!
//! Both background loops (the webhook dispatcher and the email worker) finish a job by writing
//! its outcome. When that write fails (a busy or restarting database), giving up at once
//! would leave the job to be redone after its lease expires: a webhook attempted again, an
//! email sent twice. While the lease holds, nobody else may take the job, so the outcome is
//! tried again until it is recorded or the lease is about to end; after that, the next owner
//! redoes the work, which at-least-once delivery allows.

use std::future::Future;
use std::time::Duration;

/// The pauses between tries: `first`, doubling up to `max`, and never more than half of what
/// is left of the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first pause; also the least time left on the lease for another try to be worth it.
    pub first: Duration,
    /// The longest pause.
    pub max: Duration,
}

/// Runs `write` until it succeeds, until `is_final` says an error is not worth another try
/// (for example the store has shut down), or until less than `backoff.first` is left on the
/// lease. `lease_left` is read before each pause, so a lease renewed meanwhile buys more tries.
/// Returns the last error when it stops; every retried error is logged at `warn` with `what`
/// (e.g. `"the attempt"`).
pub async fn retry_while_leased<T, E, F, Fut>(
    what: &'static str,
    backoff: Backoff,
    mut lease_left: impl FnMut() -> Duration,
    mut is_final: impl FnMut(&E) -> bool,
    mut write: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut pause = backoff.first;
    loop {
        let error = match write().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let left = lease_left();
        if is_final(&error) || left < backoff.first {
            return Err(error);
        }
        let wait = pause.min(left / 2);
        tracing::warn!(
            error = format!("{error:#}"),
            what,
            retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            "recording an outcome failed; retrying while the lease lasts"
        );
        tokio::time::sleep(wait).await;
        pause = (pause * 2).min(backoff.max);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::time::Instant;

    use super::*;

    const BACKOFF: Backoff = Backoff {
        first: Duration::from_millis(100),
        max: Duration::from_secs(2),
    };

    fn left_until(deadline: Instant) -> impl FnMut() -> Duration {
        move || deadline.saturating_duration_since(Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn an_outcome_is_retried_until_it_is_recorded() {
        let calls = AtomicU32::new(0);
        let deadline = Instant::now() + Duration::from_secs(7);
        let result: Result<u32, String> = retry_while_leased(
            "the attempt",
            BACKOFF,
            left_until(deadline),
            |_| false,
            || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 3 {
                        Err("database is locked".to_owned())
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await;
        assert_eq!(result, Ok(3));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn it_gives_up_before_the_lease_ends_after_several_tries() {
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let deadline = start + Duration::from_secs(7);
        let result: Result<(), String> = retry_while_leased(
            "the attempt",
            BACKOFF,
            left_until(deadline),
            |_| false,
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err("database is locked".to_owned()) }
            },
        )
        .await;
        assert_eq!(result, Err("database is locked".to_owned()));
        assert!(Instant::now() <= deadline, "{:?}", start.elapsed());
        assert!(calls.load(Ordering::SeqCst) > 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_error_stops_at_once() {
        let calls = AtomicU32::new(0);
        let deadline = Instant::now() + Duration::from_secs(7);
        let result: Result<(), String> = retry_while_leased(
            "the email job outcome",
            BACKOFF,
            left_until(deadline),
            |e: &String| e == "closed",
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err("closed".to_owned()) }
            },
        )
        .await;
        assert_eq!(result, Err("closed".to_owned()));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewed_lease_buys_more_tries_and_no_pause_outlasts_half_of_it() {
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        // The lease is renewed to 1 s ahead until 10 s have passed, then runs out.
        let lease_left = move || {
            let now = Instant::now();
            if now < start + Duration::from_secs(10) {
                Duration::from_secs(1)
            } else {
                (start + Duration::from_secs(11)).saturating_duration_since(now)
            }
        };
        let result: Result<(), String> = retry_while_leased(
            "the attempt",
            BACKOFF,
            lease_left,
            |_| false,
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err("database is locked".to_owned()) }
            },
        )
        .await;
        assert!(result.is_err());
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_secs(10), "{elapsed:?}");
        assert!(elapsed <= Duration::from_secs(11), "{elapsed:?}");
        // Pauses were capped at half the 1 s left, so about 20 tries in 10 s, not 5.
        assert!(calls.load(Ordering::SeqCst) >= 18, "{calls:?}");
    }
}
