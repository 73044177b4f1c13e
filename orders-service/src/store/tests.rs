//! The store's behaviour, one suite for both backends: every scenario runs twice, on a
//! temporary SQLite file and on a fresh PostgreSQL database from `TEST_DATABASE_URL` (skipped,
//! saying so, when it is not set). A scenario gets a [`TestDb`] and opens as many [`Store`]s
//! on it as it needs: two stores are two replicas (two pools; on SQLite two writers sharing
//! one file).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use webhook_common::{Currency, Money, Secret};

use super::idempotency::{IdempotencyKey, KeyedOrder};
use super::{now_ms, ClaimOnCreate, Claimed, Purged, Store, PAUSED_AT};
use crate::domain::{
    Attempt, AttemptOutcome, DeliveryJob, DeliveryStatus, EndpointPatch, NewEndpoint, NewEvent,
    Order, OrderStatus, RetryOutcome, UNLOADABLE,
};

/// How long any wait of a scenario may take before it fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// Connections per store: small, since tests run in parallel against one server.
const POOL: u32 = 4;

/// A database for one scenario, dropped (file or database) with the value.
struct TestDb {
    url: String,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<test_support::postgres::TestDatabase>,
}

impl TestDb {
    fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("a temporary directory");
        TestDb {
            url: format!("sqlite://{}", dir.path().join("orders.db").display()),
            _dir: Some(dir),
            _pg: None,
        }
    }

    async fn postgres(test: &str) -> Option<TestDb> {
        let db = test_support::postgres::TestDatabase::create(test).await?;
        Some(TestDb {
            url: db.url().to_owned(),
            _dir: None,
            _pg: Some(db),
        })
    }

    /// A new, migrated store on this database: one more replica.
    async fn store(&self) -> Store {
        let store = Store::connect_with(&self.url, POOL).await.unwrap();
        store.migrate().await.unwrap();
        store
    }
}

/// Generates, for each scenario `name(db: TestDb)`, the tests `sqlite::name` and
/// `postgres::name`.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::TestDb::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let Some(db) = super::TestDb::postgres(stringify!($scenario)).await else {
                        return;
                    };
                    super::$scenario(db).await;
                }
            )*
        }
    };
}

on_both_backends!(
    retry_requeues_an_abandoned_attempt_but_never_one_under_a_live_lease,
    abandoned_attempts_on_a_disabled_endpoint_end_paused,
    load_failures_count_as_attempts_until_the_delivery_is_dead_lettered,
    finished_old_events_go_and_everything_unfinished_or_recent_stays,
    two_replicas_claiming_at_once_keep_the_cap_and_never_share_a_delivery,
    one_idempotency_key_sent_to_two_replicas_at_once_creates_one_order,
    history_pages_on_one_replica_see_every_event_written_on_two_exactly_once,
);

/// Waits until the wall clock has passed `at` (unix ms), e.g. a lease's end.
async fn wait_past(at: i64) {
    test_support::eventually(
        "the clock has passed a lease's end",
        DEADLINE,
        || async move { (now_ms() > at).then_some(()) },
    )
    .await;
}

/// A paid order and its event, created at `created_at` (unix ms).
fn order_at(created_at: i64) -> (Order, NewEvent) {
    let (id, event_id) = (Uuid::now_v7(), Uuid::now_v7());
    let order = Order {
        id,
        product_name: "Desk lamp".into(),
        quantity: 1,
        unit_price: Money::new(3000, Currency::EUR),
        total: Money::new(3000, Currency::EUR),
        customer_email: "ada@example.com".into(),
        status: OrderStatus::Paid,
        failure_reason: None,
        created_at,
        event_id: Some(event_id),
    };
    let event = NewEvent {
        id: event_id,
        msg_id: format!("msg_{event_id}"),
        event_type: "order.paid".into(),
        order_id: Some(id),
        payload: br#"{"type":"order.paid"}"#.to_vec(),
        created_at,
    };
    (order, event)
}

/// Writes an order created now; returns its event's id.
async fn place_order(store: &Store) -> Uuid {
    let (order, event) = order_at(now_ms());
    store.create_order_with_event(&order, &event).await.unwrap();
    event.id
}

/// A new endpoint subscribed to `order.paid`.
async fn endpoint(store: &Store) -> Uuid {
    let new = NewEndpoint {
        url: "http://127.0.0.1:9/webhook".into(),
        description: None,
        event_types: vec!["order.paid".into()],
    };
    store
        .create_endpoint(&new, &Secret::generate())
        .await
        .unwrap()
        .id
}

/// Enables or disables an endpoint as the API does (pausing or resuming its deliveries).
async fn set_enabled(store: &Store, endpoint: Uuid, enabled: bool) {
    let patch = EndpointPatch {
        enabled: Some(enabled),
        ..Default::default()
    };
    store
        .update_endpoint(endpoint, &patch)
        .await
        .unwrap()
        .unwrap();
}

/// Claims exactly one due delivery under a lease of `lease_ms`.
async fn claim_one(store: &Store, lease_ms: i64) -> (DeliveryJob, Claimed) {
    let mut claimed = store.claim_due(1, lease_ms, 100).await.unwrap();
    assert_eq!(claimed.jobs.len(), 1, "one delivery is due");
    (claimed.jobs.remove(0), claimed)
}

/// An attempt as the dispatcher records it.
fn attempt(number: u32, outcome: &AttemptOutcome) -> Attempt {
    Attempt {
        attempt: number,
        started_at: now_ms(),
        duration_ms: 3,
        status_code: Some(if *outcome == AttemptOutcome::Delivered {
            200
        } else {
            500
        }),
        error_kind: None,
        response_body: None,
        outcome: outcome.as_str().to_owned(),
    }
}

/// Records `outcome` for `job`, which must still own its delivery.
async fn finish(store: &Store, job: &DeliveryJob, outcome: AttemptOutcome) {
    let recorded = store
        .finish_attempt(job, &attempt(job.attempts + 1, &outcome), &outcome, None)
        .await
        .unwrap();
    assert!(recorded, "the claim still owns the delivery");
}

/// A row in flight under an expired lease has no attempt running: a manual retry requeues
/// it (paused, on a disabled endpoint, which no claim serves). A row under a live lease is
/// never reset. The dead worker's token records nothing afterwards.
async fn retry_requeues_an_abandoned_attempt_but_never_one_under_a_live_lease(db: TestDb) {
    let store = db.store().await;
    let endpoint = endpoint(&store).await;
    place_order(&store).await;
    place_order(&store).await;
    let (live, _) = claim_one(&store, 60_000).await;
    let (dead, claim) = claim_one(&store, 50).await;
    set_enabled(&store, endpoint, false).await;
    wait_past(claim.lease_expires_at).await;

    assert_eq!(
        store.retry_delivery(live.delivery_id).await.unwrap(),
        RetryOutcome::InFlight
    );
    let status = store.delivery(live.delivery_id).await.unwrap().unwrap();
    assert_eq!(status.status, DeliveryStatus::InFlight);

    let RetryOutcome::Requeued(requeued) = store.retry_delivery(dead.delivery_id).await.unwrap()
    else {
        panic!("an expired lease was taken for a running attempt");
    };
    assert_eq!(requeued.status, DeliveryStatus::Pending);
    assert_eq!(
        requeued.next_attempt_at, PAUSED_AT,
        "its endpoint is disabled"
    );
    // Enabling the endpoint makes it due; the live lease keeps the other one.
    set_enabled(&store, endpoint, true).await;
    let claimed = store.claim_due(10, 60_000, 10).await.unwrap();
    let ids: Vec<Uuid> = claimed.jobs.iter().map(|j| j.delivery_id).collect();
    assert_eq!(ids, [dead.delivery_id]);
    let outcome = AttemptOutcome::Delivered;
    let stale = store
        .finish_attempt(&dead, &attempt(1, &outcome), &outcome, None)
        .await
        .unwrap();
    assert!(!stale, "the dead worker's token records nothing");
    finish(&store, &claimed.jobs[0], AttemptOutcome::Delivered).await;
    // What the history shows is what the owner recorded, read back the same on both
    // backends; the stale token's attempt is not there.
    let history = store.attempts(dead.delivery_id).await.unwrap();
    let recorded = attempt(claimed.jobs[0].attempts + 1, &AttemptOutcome::Delivered);
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(
        (
            history[0].attempt,
            history[0].status_code,
            &history[0].outcome
        ),
        (recorded.attempt, recorded.status_code, &recorded.outcome)
    );
    assert_eq!(history[0].duration_ms, recorded.duration_ms);
    store.close().await;
}

/// Disabling an endpoint pauses its rows left in flight under expired leases with its
/// pending ones; a claim pauses those whose leases expire after the endpoint was disabled.
/// Rows under live leases stay with their workers.
async fn abandoned_attempts_on_a_disabled_endpoint_end_paused(db: TestDb) {
    let store = db.store().await;
    let endpoint = endpoint(&store).await;
    place_order(&store).await;
    place_order(&store).await;
    let (live, live_claim) = claim_one(&store, 3_000).await;
    let (expired, expired_claim) = claim_one(&store, 50).await;
    wait_past(expired_claim.lease_expires_at).await;
    set_enabled(&store, endpoint, false).await;
    let paused = store.delivery(expired.delivery_id).await.unwrap().unwrap();
    assert_eq!(
        (paused.status, paused.next_attempt_at),
        (DeliveryStatus::Pending, PAUSED_AT)
    );
    let running = store.delivery(live.delivery_id).await.unwrap().unwrap();
    assert_eq!(running.status, DeliveryStatus::InFlight);

    // The worker holding `live` dies; its lease expires while the endpoint is disabled.
    wait_past(live_claim.lease_expires_at).await;
    let claimed = store.claim_due(10, 60_000, 10).await.unwrap();
    assert!(claimed.jobs.is_empty() && claimed.unloadable.is_empty());
    let paused = store.delivery(live.delivery_id).await.unwrap().unwrap();
    assert_eq!(
        (paused.status, paused.next_attempt_at),
        (DeliveryStatus::Pending, PAUSED_AT)
    );
    assert_eq!(store.next_due_at().await.unwrap(), None);
    store.close().await;
}

/// A load failure is recorded as the next attempt, only by the claim's owner; once the
/// schedule says no more, the delivery is dead-lettered with why.
async fn load_failures_count_as_attempts_until_the_delivery_is_dead_lettered(db: TestDb) {
    let store = db.store().await;
    endpoint(&store).await;
    place_order(&store).await;
    // One attempt sent and retried at once, then two that cannot be loaded.
    let (job, _) = claim_one(&store, 60_000).await;
    let id = job.delivery_id;
    finish(&store, &job, AttemptOutcome::Retry { at: now_ms() }).await;
    let schedule = |n: u32| (n < 3).then_some(Duration::ZERO);
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let (_, claimed) = claim_one(&store, 60_000).await;
        let stranger = Uuid::new_v4();
        let by_stranger = store
            .record_load_failure(id, stranger, "boom", schedule)
            .await
            .unwrap();
        assert_eq!(by_stranger, None, "only the claim's owner records");
        outcomes.push(
            store
                .record_load_failure(id, claimed.token, "boom", schedule)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert!(matches!(outcomes[0], AttemptOutcome::Retry { .. }));
    assert_eq!(outcomes[1], AttemptOutcome::Failed);
    let dead = store.delivery(id).await.unwrap().unwrap();
    assert_eq!((dead.status, dead.attempts), (DeliveryStatus::Failed, 3));
    assert_eq!(
        dead.last_error.as_deref(),
        Some("gave up after 3 attempts; last: the delivery could not be loaded: boom")
    );
    let attempts = store.attempts(id).await.unwrap();
    let recorded: Vec<_> = attempts
        .iter()
        .map(|a| (a.attempt, a.error_kind.as_deref(), a.outcome.as_str()))
        .collect();
    assert_eq!(
        recorded,
        [
            (1, None, "retry"),
            (2, Some(UNLOADABLE), "retry"),
            (3, Some(UNLOADABLE), "failed")
        ]
    );
    store.close().await;
}

const DAY_MS: i64 = 24 * 3600 * 1000;

/// Old finished events go with their deliveries, attempts and orders; an old event with a
/// failed delivery, an old event with a pending one and a recent delivered one stay.
async fn finished_old_events_go_and_everything_unfinished_or_recent_stays(db: TestDb) {
    let store = db.store().await;
    let old = now_ms() - 40 * DAY_MS;
    let recent = now_ms() - DAY_MS;
    // Written before any endpoint exists: an event without deliveries.
    let (no_delivery, event) = order_at(old);
    store
        .create_order_with_event(&no_delivery, &event)
        .await
        .unwrap();
    endpoint(&store).await;
    // Each written and then claimed alone, so each claim takes the one just written.
    let mut orders = BTreeMap::new();
    let mut deliveries = BTreeMap::new();
    for (name, at, outcome) in [
        ("delivered", old, Some(AttemptOutcome::Delivered)),
        ("failed", old, Some(AttemptOutcome::Failed)),
        ("recent", recent, Some(AttemptOutcome::Delivered)),
        ("pending", old, None),
    ] {
        let (order, event) = order_at(at);
        store.create_order_with_event(&order, &event).await.unwrap();
        orders.insert(name, order.id);
        let ids = store.deliveries_for_order(order.id).await.unwrap();
        deliveries.insert(name, ids[0].id);
        if let Some(outcome) = outcome {
            let (job, _) = claim_one(&store, 60_000).await;
            assert_eq!(job.delivery_id, ids[0].id);
            finish(&store, &job, outcome).await;
        }
    }
    orders.insert("no-delivery", no_delivery.id);

    // "recent" is not old enough to be looked at; "failed" and "pending" are old but kept.
    let purged = store.purge_finished(30 * DAY_MS).await.unwrap();
    assert_eq!(
        purged,
        Purged {
            events: 2,
            orders: 2,
            kept: 2
        }
    );
    let mut left = Vec::new();
    for (name, id) in &orders {
        if store.order(*id).await.unwrap().is_some() {
            left.push(*name);
        }
    }
    assert_eq!(left, ["failed", "pending", "recent"]);
    for (name, id) in &deliveries {
        let kept = store.delivery(*id).await.unwrap().is_some();
        assert_eq!(kept, *name != "delivered", "{name}");
        let attempts = store.attempts(*id).await.unwrap().len();
        let expected = usize::from(matches!(*name, "failed" | "recent"));
        assert_eq!(attempts, expected, "{name}");
    }
    let events = store.list_events(0, None, 100).await.unwrap();
    let event_orders: HashSet<Option<Uuid>> = events.iter().map(|e| e.order_id).collect();
    let kept: HashSet<Option<Uuid>> = ["failed", "pending", "recent"]
        .iter()
        .map(|name| Some(orders[name]))
        .collect();
    assert_eq!(event_orders, kept);
    // A second pass finds nothing more to delete.
    assert_eq!(store.purge_finished(30 * DAY_MS).await.unwrap().events, 0);
    store.close().await;
}

/// Two replicas claim from one endpoint's backlog at the same instant, round after round,
/// while orders on both claim their own deliveries: the deliveries in flight never exceed
/// the per-endpoint cap, and no delivery is ever handed to two claims.
async fn two_replicas_claiming_at_once_keep_the_cap_and_never_share_a_delivery(db: TestDb) {
    const CAP: u32 = 3;
    const BACKLOG: usize = 30;
    let replicas = [db.store().await, db.store().await];
    let endpoint = endpoint(&replicas[0]).await;
    for _ in 0..BACKLOG {
        place_order(&replicas[0]).await;
    }
    let on_create = ClaimOnCreate {
        lease_ms: 60_000,
        per_endpoint: CAP,
    };
    let mut seen = HashSet::new();
    let (mut written, mut delivered) = (BACKLOG, 0);
    for round in 1.. {
        assert!(round < 200, "the backlog is not draining");
        // On each replica a claim and an order claiming on creation, all at once, with
        // nothing in flight: together they may take CAP deliveries, no more.
        let barrier = Arc::new(tokio::sync::Barrier::new(4));
        let mut tasks = tokio::task::JoinSet::new();
        for replica in &replicas {
            let (store, start) = (replica.clone(), barrier.clone());
            tasks.spawn(async move {
                start.wait().await;
                store.claim_due(10, 60_000, CAP).await.unwrap().jobs
            });
            let (store, start) = (replica.clone(), barrier.clone());
            tasks.spawn(async move {
                let (order, event) = order_at(now_ms());
                start.wait().await;
                let created = store
                    .create_order_claiming(&order, &event, Some(on_create))
                    .await
                    .unwrap();
                created.claimed.map(|c| c.jobs).unwrap_or_default()
            });
        }
        written += 2;
        let mut jobs = Vec::new();
        while let Some(claimed) = tasks.join_next().await {
            jobs.extend(claimed.unwrap());
        }
        assert!(
            jobs.len() <= CAP as usize,
            "round {round}: {} deliveries of one endpoint in flight, cap {CAP}",
            jobs.len()
        );
        for job in &jobs {
            assert_eq!(job.endpoint_id, endpoint);
            assert!(
                seen.insert(job.delivery_id),
                "delivery {} handed out twice",
                job.delivery_id
            );
            finish(&replicas[round % 2], job, AttemptOutcome::Delivered).await;
        }
        delivered += jobs.len();
        if delivered == written {
            break;
        }
    }
    let counts = replicas[1].delivery_counts().await.unwrap();
    assert_eq!(counts, [("delivered".to_owned(), delivered as i64)]);
    for replica in &replicas {
        replica.close().await;
    }
}

/// The same `Idempotency-Key` reaches two replicas at the same instant, many times over: each
/// time exactly one order is created and the other request gets the first one's answer.
async fn one_idempotency_key_sent_to_two_replicas_at_once_creates_one_order(db: TestDb) {
    let replicas = [db.store().await, db.store().await];
    endpoint(&replicas[0]).await;
    for round in 0..20 {
        let key = format!("key-{round}-{}", Uuid::new_v4());
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let mut tasks = tokio::task::JoinSet::new();
        for replica in &replicas {
            let (store, start, key) = (replica.clone(), barrier.clone(), key.clone());
            tasks.spawn(async move {
                let (order, event) = order_at(now_ms());
                let key = IdempotencyKey {
                    key,
                    request_sha256: "same-request".into(),
                    response_status: 201,
                    response_body: format!("{{\"id\":\"{}\"}}", order.id),
                };
                start.wait().await;
                let outcome = store
                    .create_order_keyed(&order, &event, None, Some(&key))
                    .await
                    .unwrap();
                (order.id, key.response_body, outcome)
            });
        }
        let mut created = Vec::new();
        let mut replayed = Vec::new();
        while let Some(done) = tasks.join_next().await {
            match done.unwrap() {
                (id, body, KeyedOrder::Created(_)) => created.push((id, body)),
                (_, _, KeyedOrder::Replayed(answer)) => replayed.push(answer),
                (_, _, KeyedOrder::KeyReused) => panic!("the same request was called a reuse"),
            }
        }
        assert_eq!(created.len(), 1, "round {round}: {created:?}");
        assert_eq!(replayed.len(), 1, "round {round}");
        assert_eq!(replayed[0].order_id, created[0].0);
        assert_eq!(replayed[0].body, created[0].1);
    }
    let orders = replicas[1].list_orders(None, 100).await.unwrap();
    assert_eq!(orders.len(), 20);
    for replica in &replicas {
        replica.close().await;
    }
}

/// Reads the whole history after `cursor` page by page (5 events a page); returns the new
/// cursor, appending what it read to `seen`.
async fn read_on(store: &Store, mut cursor: i64, seen: &mut Vec<Uuid>) -> i64 {
    loop {
        let page = store.list_events(cursor, None, 5).await.unwrap();
        if let Some(last) = page.last() {
            assert!(last.seq > cursor, "pages go forward");
            cursor = last.seq;
        }
        seen.extend(page.iter().map(|e| e.id));
        if page.len() < 5 {
            return cursor;
        }
    }
}

/// Four writers on two replicas write events while a reader pages through the history with
/// `after=` over and over: in the end the reader has seen every event exactly once.
async fn history_pages_on_one_replica_see_every_event_written_on_two_exactly_once(db: TestDb) {
    const PER_WRITER: usize = 25;
    let replicas = [db.store().await, db.store().await];
    endpoint(&replicas[0]).await;
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..4 {
        let store = replicas[w % 2].clone();
        writers.spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..PER_WRITER {
                ids.push(place_order(&store).await);
            }
            ids
        });
    }
    let reader = replicas[1].clone();
    let mut seen = Vec::new();
    let mut cursor = 0;
    let mut written = Vec::new();
    while !writers.is_empty() {
        cursor = read_on(&reader, cursor, &mut seen).await;
        while let Some(done) = writers.try_join_next() {
            written.extend(done.unwrap());
        }
    }
    read_on(&reader, cursor, &mut seen).await;
    let unique: HashSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "an event was paged twice");
    assert_eq!(written.len(), 4 * PER_WRITER);
    let written: HashSet<Uuid> = written.into_iter().collect();
    assert_eq!(unique, written, "an event was skipped");
    for replica in &replicas {
        replica.close().await;
    }
}

/// An event whose transaction takes its place, then commits only after a reader has paged
/// past events committed meanwhile on another replica, is still in a later page: a sequence
/// number taken before commit would have put it behind the reader's cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_history_never_skips_an_event_whose_transaction_commits_late() {
    let Some(db) = TestDb::postgres("history_late_commit").await else {
        return;
    };
    let (slow, fast) = (db.store().await, db.store().await);
    let super::Backend::Postgres(pg) = &slow.backend else {
        unreachable!("a PostgreSQL test database");
    };
    // The slow writer inserts its event first (oldest created_at), and holds its
    // transaction open.
    let late = Uuid::now_v7();
    let mut tx = pg.pool().begin().await.unwrap();
    sqlx::query(
        "INSERT INTO events (id, msg_id, event_type, payload, created_at) \
         VALUES ($1, $2, 'order.paid', '\\x7b7d', $3)",
    )
    .bind(late)
    .bind(format!("msg_{late}"))
    .bind(now_ms() - 1000)
    .execute(&mut *tx)
    .await
    .unwrap();
    // Meanwhile another replica commits three events, and the reader pages past them.
    let mut early = Vec::new();
    for _ in 0..3 {
        early.push(place_order(&fast).await);
    }
    let mut seen = Vec::new();
    let cursor = read_on(&fast, 0, &mut seen).await;
    assert_eq!(seen, early);
    // The slow transaction commits; the next page has its event.
    tx.commit().await.unwrap();
    read_on(&fast, cursor, &mut seen).await;
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[3], late, "the late event comes after the cursor");
    // And the history stays in one order for every reader.
    let from_start = slow.list_events(0, None, 10).await.unwrap();
    let ids: Vec<Uuid> = from_start.iter().map(|e| e.id).collect();
    assert_eq!(ids, seen);
    slow.close().await;
    fast.close().await;
}

/// On PostgreSQL, every write that makes a delivery due now wakes the dispatcher of every
/// replica: an order, a manual retry, an endpoint enabled again, and a release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writes_that_make_work_due_wake_every_replica() {
    let Some(db) = TestDb::postgres("wake_every_replica").await else {
        return;
    };
    let (writer, listener) = (db.store().await, db.store().await);
    let wake = Arc::new(Notify::new());
    let stop = CancellationToken::new();
    let listening = listener
        .listen_for_work(wake.clone(), stop.clone())
        .expect("a listener on PostgreSQL");
    let woken = || async {
        tokio::time::timeout(DEADLINE, wake.notified())
            .await
            .expect("the other replica was woken");
    };
    // The listener pokes once it listens; from then on, every poke is a notification.
    woken().await;

    let endpoint = endpoint(&writer).await;
    place_order(&writer).await;
    woken().await;

    let (job, claimed) = claim_one(&writer, 60_000).await;
    writer
        .release(job.delivery_id, claimed.token, 0)
        .await
        .unwrap();
    woken().await;

    let (job, _) = claim_one(&writer, 60_000).await;
    finish(&writer, &job, AttemptOutcome::Failed).await;
    let retried = writer.retry_delivery(job.delivery_id).await.unwrap();
    assert!(matches!(retried, RetryOutcome::Requeued(_)));
    woken().await;

    set_enabled(&writer, endpoint, false).await;
    set_enabled(&writer, endpoint, true).await;
    woken().await;

    stop.cancel();
    listening.await.unwrap();
    writer.close().await;
    listener.close().await;
}

/// A store on SQLite has no listener: its own writes poke its dispatcher directly.
#[tokio::test]
async fn sqlite_has_no_cross_replica_listener() {
    let db = TestDb::sqlite();
    let store = db.store().await;
    let listener = store.listen_for_work(Arc::new(Notify::new()), CancellationToken::new());
    assert!(listener.is_none());
    store.close().await;
}
