//! The intake's steps and the states between them, shared by both backends' `record_webhook`:
//!
//! 1. prepare: [`PreparedWebhook::prepare`] turns a verified webhook into the values the
//!    statements bind (no I/O);
//! 2. record: the backend inserts the dedup record (a duplicate stops here, and so does an
//!    event type this service ignores) and reads the order as [`OrderSnapshot`] (SQLite
//!    reads the order first and inserts the record after step 3, see below);
//! 3. decide: [`rule`] applies the ordering rule ([`decide`]) to the snapshot, giving a
//!    [`Ruling`] (no I/O);
//! 4. write: the backend applies the ruling (a stale mark, or [`Queueing`]'s statements).
//!
//! The backends differ only in how steps 2 and 4 reach the database and in what makes the
//! read-modify-write of an order atomic (see each backend's `intake.rs`). SQLite, whose
//! writer holds the write lock for the whole batch, reads the order and rules before it
//! inserts the dedup record, so the record is written once with its final outcome;
//! PostgreSQL inserts it first (as `pending` until the ruling), because the unique
//! insert is what serialises two replicas receiving the same webhook.

use super::{decide, to_ms, IncomingWebhook, OrderEmail, OrderEventKind, OrderState};
use crate::domain::MAX_RECORDED_TYPE_LEN;

/// A verified webhook as the intake's statements bind it.
#[derive(Debug)]
pub(super) struct PreparedWebhook<'a> {
    /// The webhook itself (its id, email and trace id are bound as they are).
    pub webhook: &'a IncomingWebhook,
    /// Its wire type, cut to [`MAX_RECORDED_TYPE_LEN`] characters.
    pub event_type: String,
    /// When the event happened, in unix ms.
    pub event_at: i64,
    /// The order (as text) of a handled event; `None` for a type this service ignores.
    pub order_id: Option<String>,
}

impl<'a> PreparedWebhook<'a> {
    /// Step 1: the values of `webhook` the statements bind.
    pub fn prepare(webhook: &'a IncomingWebhook) -> Self {
        PreparedWebhook {
            webhook,
            event_type: webhook
                .event_type
                .chars()
                .take(MAX_RECORDED_TYPE_LEN)
                .collect(),
            event_at: to_ms(webhook.event_at),
            order_id: webhook.email.as_ref().map(|e| e.order_id.to_string()),
        }
    }

    /// The email a handled event asks for and its order (as bound); `None` for an event type
    /// this service ignores, whose intake ends with its dedup record.
    pub fn handled(&self) -> Option<(&'a OrderEmail, &str)> {
        self.webhook.email.as_ref().zip(self.order_id.as_deref())
    }
}

/// What the ordering rule reads of an order, inside the intake's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct OrderSnapshot {
    /// What the customer has been told so far.
    pub state: OrderState,
    /// The latest lease expiry among the order's failure notices that a worker holds now (a
    /// lease is live while `lease_expires_at >= now`, as the claim reads it); `None` when no
    /// worker holds one.
    pub notice_lease_expires_at: Option<i64>,
}

/// What the intake writes for a handled event (step 3's result).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ruling {
    /// What the customer was already told supersedes it: the dedup record says `stale`.
    Stale,
    /// The email is queued.
    Queue(Queueing),
}

/// The writes of a queued email, besides the job itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Queueing {
    /// The order's state once this email is queued.
    pub state: OrderState,
    /// When the email job becomes claimable (its `next_attempt_at`).
    pub due_at: i64,
    /// A confirmation of an order that had a failure notice queued: the order's queued
    /// failure notices that no worker holds are cancelled. (An order without a
    /// `last_failure_at` has no failure notice: its state is written with every notice and
    /// is not purged while one is queued, so the update is skipped.)
    pub cancels_notices: bool,
}

/// Step 3: the ruling on a handled event of `kind` that happened at `event_at`, given the
/// order's `snapshot` read at `now` (see [`decide`]). A confirmation waits until no worker
/// holds a failure notice of its order (the first millisecond after the latest such lease);
/// everything else is due at once.
pub(super) fn rule(
    snapshot: OrderSnapshot,
    kind: OrderEventKind,
    event_at: i64,
    now: i64,
) -> Ruling {
    if !decide(snapshot.state, kind, event_at) {
        return Ruling::Stale;
    }
    let is_payment = kind == OrderEventKind::Paid;
    let state = if is_payment {
        OrderState {
            paid_at: Some(event_at),
            ..snapshot.state
        }
    } else {
        OrderState {
            last_failure_at: Some(event_at),
            ..snapshot.state
        }
    };
    let due_at = match snapshot.notice_lease_expires_at {
        Some(expires_at) if is_payment => expires_at.saturating_add(1),
        _ => now,
    };
    Ruling::Queue(Queueing {
        state,
        due_at,
        cancels_notices: is_payment && snapshot.state.last_failure_at.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 5_000_000;

    fn snapshot(paid_at: Option<i64>, notice_lease_expires_at: Option<i64>) -> OrderSnapshot {
        OrderSnapshot {
            state: OrderState {
                paid_at,
                last_failure_at: Some(NOW - 10),
            },
            notice_lease_expires_at,
        }
    }

    #[test]
    fn a_confirmation_waits_for_a_held_failure_notice_and_cancels_the_others() {
        let ruling = rule(
            snapshot(None, Some(NOW + 7)),
            OrderEventKind::Paid,
            NOW - 1,
            NOW,
        );
        let want = Queueing {
            state: OrderState {
                paid_at: Some(NOW - 1),
                last_failure_at: Some(NOW - 10),
            },
            due_at: NOW + 8,
            cancels_notices: true,
        };
        assert_eq!(ruling, Ruling::Queue(want));
        let free = rule(snapshot(None, None), OrderEventKind::Paid, NOW - 1, NOW);
        assert!(matches!(free, Ruling::Queue(q) if q.due_at == NOW && q.cancels_notices));
    }

    #[test]
    fn a_confirmation_of_an_order_that_never_failed_has_no_notice_to_cancel() {
        let never_failed = OrderSnapshot {
            state: OrderState::default(),
            notice_lease_expires_at: None,
        };
        let ruling = rule(never_failed, OrderEventKind::Paid, NOW - 1, NOW);
        let want = Queueing {
            state: OrderState {
                paid_at: Some(NOW - 1),
                last_failure_at: None,
            },
            due_at: NOW,
            cancels_notices: false,
        };
        assert_eq!(ruling, Ruling::Queue(want));
    }

    #[test]
    fn a_failure_notice_is_due_at_once_and_a_stale_event_writes_nothing_else() {
        let ruling = rule(
            snapshot(None, Some(NOW + 7)),
            OrderEventKind::PaymentFailed,
            NOW - 1,
            NOW,
        );
        let want = Queueing {
            state: OrderState {
                paid_at: None,
                last_failure_at: Some(NOW - 1),
            },
            due_at: NOW,
            cancels_notices: false,
        };
        assert_eq!(ruling, Ruling::Queue(want));
        let paid = snapshot(Some(NOW - 5), None);
        assert_eq!(
            rule(paid, OrderEventKind::PaymentFailed, NOW, NOW),
            Ruling::Stale
        );
        assert_eq!(rule(paid, OrderEventKind::Paid, NOW, NOW), Ruling::Stale);
    }
}
