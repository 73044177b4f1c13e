//! Waiting on a condition with a deadline: the one polling loop the test harnesses share.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long to sleep between two checks.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `check` every [`POLL_INTERVAL`] until it returns `Some`, and returns that value;
/// panics naming `what` once `deadline` has passed without it.
///
/// `what` reads as the condition waited for: "the delivery is sent".
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll_within(deadline, check).await {
        Some(value) => value,
        None => panic!("timed out after {deadline:?} waiting until {what}"),
    }
}

/// Polls `check` every [`POLL_INTERVAL`] until it returns `Some`; `None` once `deadline` has
/// passed without it, for callers that fail with more context than [`eventually`] has.
///
/// `check` runs at least once, and once more after the deadline has passed, so a condition
/// met during the last sleep still counts.
pub async fn poll_within<T, F, Fut>(deadline: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if start.elapsed() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_first_value_the_check_yields() {
        let mut calls = 0;
        let value = eventually("the third call", Duration::from_secs(5), || {
            calls += 1;
            std::future::ready((calls == 3).then_some(calls))
        })
        .await;
        assert_eq!(value, 3);
    }

    #[tokio::test]
    async fn gives_up_after_the_deadline() {
        let start = Instant::now();
        let never = poll_within(Duration::from_millis(60), || async { None::<()> }).await;
        assert!(never.is_none());
        assert!(start.elapsed() >= Duration::from_millis(60));
    }

    #[tokio::test]
    #[should_panic(expected = "waiting until the moon is blue")]
    async fn eventually_names_what_it_waited_for() {
        eventually("the moon is blue", Duration::from_millis(30), || async {
            None::<()>
        })
        .await;
    }
}
