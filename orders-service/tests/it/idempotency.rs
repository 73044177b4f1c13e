//! `Idempotency-Key` on `POST /orders`: a retry answers the first answer without a second
//! order, a reused key with another body is refused, concurrent requests with one key create
//! one order, keys expire, and a malformed header is a 400.

use std::time::Duration;

use orders_service::api::orders::OrderResponse;
use orders_service::store::now_ms;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::{body_as, json_of, order_body, AppOptions, Receiver, TestApp};

/// `POST /orders` with `body` and `Idempotency-Key: key`.
async fn post_keyed(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    app.http
        .post(app.url("/orders"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body.to_string())
        .send()
        .await
        .expect("POST /orders")
}

/// Status, `Location`, `Idempotent-Replayed` and the body text of an answer.
async fn parts(r: reqwest::Response) -> (u16, String, Option<String>, String) {
    let status = r.status().as_u16();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().expect("ASCII header").to_owned())
    };
    let location = header("location").unwrap_or_default();
    let replayed = header("idempotent-replayed");
    (status, location, replayed, r.text().await.expect("body"))
}

/// Every order in the database.
async fn orders(app: &TestApp) -> Vec<Uuid> {
    let orders = app.store.list_orders(None, 100).await.expect("orders");
    orders.into_iter().map(|o| o.id).collect()
}

/// A pool on the instance's database file, for changes the API cannot make.
async fn raw_db(app: &TestApp) -> sqlx::SqlitePool {
    let db = app.dir.path().join("orders.db");
    sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("second pool on the database")
}

#[tokio::test]
async fn a_retry_with_the_key_answers_the_first_answer_without_a_second_order_or_webhook() {
    let mut receiver = Receiver::start(Vec::new()).await;
    let app = TestApp::spawn(AppOptions::to(&receiver)).await;
    let key = Uuid::new_v4().to_string();

    let (status, location, replayed, first) =
        parts(post_keyed(&app, &key, &order_body()).await).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(replayed, None);
    let id = serde_json::from_str::<OrderResponse>(&first).unwrap().id;
    assert_eq!(location, format!("/orders/{id}"));
    let webhook = receiver.next().await;
    assert!(webhook.verified);

    // The same request again, then the same order written differently (key order, spacing,
    // the price as a decimal string): the first answer, byte for byte, marked as replayed.
    let mut rewritten = order_body();
    rewritten["price_per_item"] = "12.50".into();
    let rewritten = json!({
        "customer_email": rewritten["customer_email"],
        "price_per_item": rewritten["price_per_item"],
        "quantity": rewritten["quantity"],
        "product_name": rewritten["product_name"],
        "currency": "EUR",
    });
    for body in [order_body(), rewritten] {
        let (status, again_location, replayed, again) =
            parts(post_keyed(&app, &key, &body).await).await;
        assert_eq!(status, 201, "{again}");
        assert_eq!(replayed.as_deref(), Some("true"));
        assert_eq!(again_location, location);
        assert_eq!(again, first);
    }

    assert_eq!(orders(&app).await, vec![id]);
    assert_eq!(app.store.event_msg_ids_by_order().await.unwrap().len(), 1);
    assert_eq!(app.deliveries(id).await.len(), 1);
    // The first webhook was handed over at once; a second would follow as fast.
    assert!(
        receiver
            .next_within(Duration::from_millis(300))
            .await
            .is_none(),
        "a replay sent a second webhook"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_same_key_with_a_different_body_is_a_422_and_creates_nothing() {
    let app = TestApp::spawn(AppOptions::default()).await;
    let key = "order-42";
    let r = post_keyed(&app, key, &order_body()).await;
    assert_eq!(r.status(), 201);
    let first = r.text().await.unwrap();

    let mut other = order_body();
    other["quantity"] = 3.into();
    let r = post_keyed(&app, key, &other).await;
    assert_eq!(r.status(), 422);
    assert!(r.headers().get("idempotent-replayed").is_none());
    let v = json_of(r).await;
    assert_eq!(v["error"]["code"], "idempotency_key_reused", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Idempotency-Key") && message.contains("different"),
        "{message}"
    );

    // The key still answers for its first request.
    let (status, _, replayed, again) = parts(post_keyed(&app, key, &order_body()).await).await;
    assert_eq!((status, replayed.as_deref()), (201, Some("true")));
    assert_eq!(again, first);
    assert_eq!(orders(&app).await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn without_the_header_every_request_is_a_new_order() {
    let app = TestApp::spawn(AppOptions::default()).await;
    let a = app.post_order(order_body()).await;
    assert!(a.headers().get("idempotent-replayed").is_none());
    let a: OrderResponse = body_as(a).await;
    let b = app.place_order(order_body()).await;
    assert_ne!(a.id, b.id);
    assert_eq!(orders(&app).await.len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_requests_with_one_key_create_one_order() {
    let app = TestApp::spawn(AppOptions::default()).await;
    let key = Uuid::new_v4().to_string();
    let requests: Vec<_> = (0..16)
        .map(|_| {
            let request = app
                .http
                .post(app.url("/orders"))
                .header("content-type", "application/json")
                .header("idempotency-key", &key)
                .body(order_body().to_string());
            tokio::spawn(async move { parts(request.send().await.expect("POST /orders")).await })
        })
        .collect();
    let mut bodies = Vec::new();
    let mut replays = 0;
    for request in requests {
        let (status, _, replayed, body) = request.await.unwrap();
        assert_eq!(status, 201, "{body}");
        replays += usize::from(replayed.is_some());
        bodies.push(body);
    }
    assert_eq!(replays, 15, "exactly one request created the order");
    let first = &bodies[0];
    assert!(bodies.iter().all(|b| b == first), "{bodies:?}");
    let id = serde_json::from_str::<OrderResponse>(first).unwrap().id;
    assert_eq!(orders(&app).await, vec![id]);
    assert_eq!(app.store.event_msg_ids_by_order().await.unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn an_expired_key_is_new_again() {
    let app = TestApp::spawn(AppOptions::default()).await;
    let key = "retry-me";
    let first: OrderResponse = body_as(post_keyed(&app, key, &order_body()).await).await;

    let pool = raw_db(&app).await;
    let expired = sqlx::query("UPDATE idempotency_keys SET expires_at = $1 WHERE key = $2")
        .bind(now_ms() - 1)
        .bind(key)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(expired.rows_affected(), 1);

    // A new order, and the key's row now answers for it, for another 24 h.
    let r = post_keyed(&app, key, &order_body()).await;
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("idempotent-replayed").is_none());
    let second_text = r.text().await.unwrap();
    let second: OrderResponse = serde_json::from_str(&second_text).unwrap();
    assert_ne!(second.id, first.id);
    let (order_id, expires_at): (String, i64) =
        sqlx::query_as("SELECT order_id, expires_at FROM idempotency_keys WHERE key = $1")
            .bind(key)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(order_id, second.id.to_string());
    assert!(expires_at > now_ms() + 23 * 3600 * 1000, "{expires_at}");
    let (status, _, replayed, again) = parts(post_keyed(&app, key, &order_body()).await).await;
    assert_eq!((status, replayed.as_deref()), (201, Some("true")));
    assert_eq!(again, second_text);
    assert_eq!(orders(&app).await.len(), 2);
    pool.close().await;
    app.stop().await;
}

#[tokio::test]
async fn expired_keys_are_deleted_in_batches_and_live_ones_stay() {
    let app = TestApp::spawn(AppOptions::default()).await;
    let live = "still-live";
    assert_eq!(post_keyed(&app, live, &order_body()).await.status(), 201);
    let pool = raw_db(&app).await;
    // More than two batches of expired keys.
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1234) \
         INSERT INTO idempotency_keys (key, request_sha256, order_id, response_status, \
         response_body, created_at, expires_at) \
         SELECT 'old-' || i, 'h', 'o', 201, '{}', 0, $1 FROM n",
    )
    .bind(now_ms() - 1)
    .execute(&pool)
    .await
    .unwrap();

    let one_batch = app
        .store
        .delete_expired_idempotency_keys(now_ms(), 500)
        .await
        .unwrap();
    assert_eq!(one_batch, 500);
    let rest = app
        .store
        .expire_idempotency_keys(&tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(rest, 734);
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_keys")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(keys, vec![live.to_owned()]);
    pool.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_request_that_failed_stores_no_key_so_its_retry_creates_the_order() {
    let app = TestApp::spawn(AppOptions::default()).await;
    let pool = raw_db(&app).await;
    sqlx::query(
        "CREATE TRIGGER refuse_orders BEFORE INSERT ON orders \
         BEGIN SELECT RAISE(ABORT, 'refused by test'); END",
    )
    .execute(&pool)
    .await
    .unwrap();
    let key = "after-a-500";
    assert_eq!(post_keyed(&app, key, &order_body()).await.status(), 500);
    sqlx::query("DROP TRIGGER refuse_orders")
        .execute(&pool)
        .await
        .unwrap();

    let r = post_keyed(&app, key, &order_body()).await;
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("idempotent-replayed").is_none());
    assert_eq!(orders(&app).await.len(), 1);
    pool.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_malformed_key_is_a_400_naming_the_header() {
    let app = TestApp::spawn(AppOptions::default()).await;
    let too_long = "k".repeat(256);
    let bad: [&[u8]; 4] = [b"", too_long.as_bytes(), b"caf\xc3\xa9", b"a\tb"];
    for key in bad {
        let value = reqwest::header::HeaderValue::from_bytes(key).unwrap();
        let r = app
            .http
            .post(app.url("/orders"))
            .header("content-type", "application/json")
            .header("idempotency-key", value)
            .body(order_body().to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{key:?}");
        let v = json_of(r).await;
        assert_eq!(v["error"]["code"], "invalid_header", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key"),
            "{v}"
        );
    }
    // Given twice, even with one value.
    let r = app
        .http
        .post(app.url("/orders"))
        .header("content-type", "application/json")
        .header("idempotency-key", "a")
        .header("idempotency-key", "a")
        .body(order_body().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(orders(&app).await.is_empty());

    // The longest key, and one with a space and every kind of punctuation, are fine.
    let longest = "k".repeat(255);
    for key in [longest.as_str(), "order 7: {\"x\"} ~!@#$%^&*()"] {
        assert_eq!(post_keyed(&app, key, &order_body()).await.status(), 201);
    }
    assert_eq!(orders(&app).await.len(), 2);
    app.stop().await;
}
