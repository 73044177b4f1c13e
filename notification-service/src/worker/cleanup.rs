//! Periodic deletion of what is old and finished: deduplication records older than their
//! retention, and sent or cancelled notifications (and the order states nothing needs any
//! more) older than theirs.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Rows deleted per statement, so the write lock is never held for long.
const BATCH: u32 = 1000;

/// Every `interval` (and once at start), deletes dedup records older than `retention`, and
/// finished notifications and unused order states older than `notification_retention`
/// (`None`: kept forever), in bounded batches, until none are left or `shutdown` is cancelled.
pub async fn run_cleanup(
    store: Store,
    retention: Duration,
    notification_retention: Option<Duration>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        if let Some(keep) = notification_retention {
            purge_notifications(&store, keep, &shutdown).await;
        }
        let mut total = 0u64;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match store.delete_expired(retention, BATCH).await {
                Ok(n) => {
                    total += n;
                    if n < u64::from(BATCH) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "deleting expired dedup records failed");
                    break;
                }
            }
            // Let other writes queue up between batches: the writer commits in arrival order.
            tokio::task::yield_now().await;
        }
        if total > 0 {
            tracing::info!(deleted = total, "deleted expired dedup records");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {},
        }
    }
}

/// Deletes finished notifications and unused order states older than `keep`, batch after
/// batch, until a batch finds fewer than it may delete.
async fn purge_notifications(store: &Store, keep: Duration, shutdown: &CancellationToken) {
    let (mut notifications, mut states) = (0u64, 0u64);
    while !shutdown.is_cancelled() {
        match store.purge_finished(keep, BATCH).await {
            Ok((n, s)) => {
                notifications += n;
                states += s;
                if n < u64::from(BATCH) && s < u64::from(BATCH) {
                    break;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "deleting old notifications failed");
                break;
            }
        }
        tokio::task::yield_now().await;
    }
    if notifications + states > 0 {
        tracing::info!(
            notifications,
            order_states = states,
            "deleted notifications and order states past their retention"
        );
    }
}
