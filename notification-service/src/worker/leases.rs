//! The leases a worker holds, as it last knows them. Leases are short (a crashed worker's
//! jobs are retried soon) and renewed while the worker lives, so a live worker keeps its
//! jobs for as long as it needs them; a job's task reads here how long it may still act.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::store::{to_ms, ClaimedJob, RenewedLease};

/// A job is identified by its id and the claim that holds it: after a lost lease the same
/// job may be claimed again under another token, and the two must not be confused.
type Key = (Uuid, Uuid);

/// Every lease this worker holds, with the expiry its last claim or renewal committed.
#[derive(Debug, Default)]
pub(super) struct HeldLeases {
    held: Mutex<HashMap<Key, Arc<AtomicI64>>>,
}

impl HeldLeases {
    /// Starts tracking `job`'s lease; it is renewed until the returned handle is dropped.
    pub(super) fn hold(self: &Arc<Self>, job: &ClaimedJob) -> HeldLease {
        let key = (job.id, job.claim_token);
        let expires_at_ms = Arc::new(AtomicI64::new(to_ms(job.lease_expires_at)));
        self.lock().insert(key, expires_at_ms.clone());
        HeldLease {
            leases: self.clone(),
            key,
            expires_at_ms,
        }
    }

    /// The jobs to renew, by claim token: only those still in hand. A job of the same claim
    /// whose task has let go (its outcome could not be recorded) must not be kept leased by
    /// its siblings' renewals, or its retry would wait for them.
    pub(super) fn held(&self) -> Vec<(Uuid, Vec<Uuid>)> {
        let mut by_token: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        for (id, token) in self.lock().keys() {
            by_token.entry(*token).or_default().push(*id);
        }
        by_token.into_iter().collect()
    }

    /// Records the expiries a renewal committed.
    pub(super) fn extend(&self, renewed: &[RenewedLease]) {
        let held = self.lock();
        for lease in renewed {
            if let Some(expires_at_ms) = held.get(&(lease.id, lease.claim_token)) {
                expires_at_ms.fetch_max(to_ms(lease.lease_expires_at), Ordering::Relaxed);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<AtomicI64>>> {
        // The map stays consistent even if a holder panicked: every update is one insert,
        // remove or atomic store.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One job's lease while its task runs. Dropping it ends the renewal of that job.
#[derive(Debug)]
pub(super) struct HeldLease {
    leases: Arc<HeldLeases>,
    key: Key,
    /// The lease expiry (unix ms), raised by each renewal that included this job.
    expires_at_ms: Arc<AtomicI64>,
}

impl HeldLease {
    /// How long the lease is known to last from now; zero once it is over.
    pub(super) fn remaining(&self) -> Duration {
        let left = self.expires_at_ms.load(Ordering::Relaxed) - to_ms(OffsetDateTime::now_utc());
        Duration::from_millis(u64::try_from(left).unwrap_or(0))
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        self.leases.lock().remove(&self.key);
    }
}
