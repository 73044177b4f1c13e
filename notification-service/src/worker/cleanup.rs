//! Periodic deletion of deduplication records older than the retention.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Rows deleted per statement, so the write lock is never held for long.
const BATCH: u32 = 1000;

/// Every `interval` (and once at start), deletes dedup records older than `retention`, in
/// bounded batches, until none are left or `shutdown` is cancelled.
pub async fn run_cleanup(
    store: Store,
    retention: Duration,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
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
