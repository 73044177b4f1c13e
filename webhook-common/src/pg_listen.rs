//! Wake-ups across replicas: PostgreSQL `LISTEN/NOTIFY` turned into a local [`Notify`].
//!
//! A replica that committed work pokes its [`Notifier`], which sends `NOTIFY channel`; every
//! replica's [`spawn`]ed listener then pokes its own `Notify`, so the dispatcher or worker of
//! each replica wakes at once, not only the one that took the request.
//!
//! The notification is sent *after* the writer's commit, in a transaction of its own, and not
//! inside the writer's transaction: PostgreSQL serialises the commits of every transaction that
//! notified (one lock for the whole server, held through the commit's WAL flush), which capped
//! a 2 + 2 replica run at a few hundred orders/s. A `NOTIFY` alone writes no WAL, so its commit
//! is quick, and one [`Notifier`] per process sends at most one at a time, folding the pokes
//! that arrive meanwhile into the next. A crash between the commit and the `NOTIFY` costs the
//! other replicas one wake-up: their loops still poll.
//!
//! A listener that loses its connection reconnects with a capped backoff and pokes the
//! `Notify` after each reconnect: notifications sent while it was away are lost, and the loop
//! it wakes looks at the database anyway. The loops keep their periodic poll as a backstop.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{mpsc, Notify};
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

/// Sends `NOTIFY channel` for the writers of one process, after their commits; cheap to clone.
#[derive(Clone, Debug)]
pub struct Notifier {
    /// Capacity one: a poke while one is already waiting adds nothing (that one will be sent
    /// after the poker's commit anyway).
    pokes: mpsc::Sender<()>,
}

impl Notifier {
    /// Starts the task that sends the notifications on `pool`; it ends when every clone of the
    /// `Notifier` is dropped or the pool is closed.
    pub fn spawn(pool: &PgPool, channel: &str) -> Notifier {
        let (pokes, mut poked) = mpsc::channel::<()>(1);
        let pool = pool.clone();
        let channel = channel.to_owned();
        tokio::spawn(async move {
            while poked.recv().await.is_some() {
                let sent = sqlx::query("SELECT pg_notify($1, '')")
                    .bind(&channel)
                    .execute(&pool)
                    .await;
                if let Err(e) = sent {
                    if pool.is_closed() {
                        return;
                    }
                    tracing::warn!(
                        channel,
                        error = %e,
                        "could not wake the other replicas; they find the work at their next poll"
                    );
                }
            }
        });
        Notifier { pokes }
    }

    /// Wakes every replica's listener on the channel soon. Call it after the commit of the work
    /// it announces, never before: a replica woken early would not see the work yet.
    pub fn notify(&self) {
        // Full: a notification is already due to be sent after this commit; closed: shutting
        // down. Neither needs another.
        let _ = self.pokes.try_send(());
    }
}
