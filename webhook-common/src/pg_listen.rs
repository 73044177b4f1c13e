//! Wake-ups across replicas: PostgreSQL `LISTEN/NOTIFY` turned into a local [`Notify`].
//!
//! A replica that commits work runs `pg_notify(channel, '')` in the same transaction; every
//! replica's [`spawn`]ed listener then pokes its own `Notify`, so the dispatcher or worker of
//! each replica wakes at once, not only the one that took the request. PostgreSQL delivers a
//! notification only when (and if) its transaction commits.
//!
//! A listener that loses its connection reconnects with a capped backoff and pokes the
//! `Notify` after each reconnect: notifications sent while it was away are lost, and the loop
//! it wakes looks at the database anyway. The loops keep their periodic poll as a backstop.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The longest wait between two attempts to reconnect the listener.
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(5);

/// Listens on `channel` until `shutdown`, calling `wake.notify_one()` for every notification
/// and after every (re)connect. Runs on a connection of its own, opened from `pool`'s options.
pub fn spawn(
    pool: &PgPool,
    channel: &str,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let pool = pool.clone();
    let channel = channel.to_owned();
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let listened = tokio::select! {
                () = shutdown.cancelled() => return,
                listened = listen(&pool, &channel, &wake) => listened,
            };
            if let Err(e) = listened {
                tracing::warn!(
                    channel,
                    error = %e,
                    retry_in_ms = backoff.as_millis() as u64,
                    "LISTEN connection lost; other replicas' wake-ups wait for the poll until it is back"
                );
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
        }
    })
}

/// One connection's worth of listening: returns only with the error that ended it.
async fn listen(pool: &PgPool, channel: &str, wake: &Notify) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    tracing::debug!(channel, "listening for wake-ups from other replicas");
    // Anything committed while we were not listening has no notification: look now.
    wake.notify_one();
    loop {
        // `None`: the connection dropped; the next call reconnects (or fails, ending this
        // round). Whatever was notified in between is lost, so wake the loop to look.
        match listener.try_recv().await? {
            Some(_) => wake.notify_one(),
            None => {
                tracing::debug!(channel, "LISTEN connection dropped; reconnecting");
                wake.notify_one();
            }
        }
    }
}
