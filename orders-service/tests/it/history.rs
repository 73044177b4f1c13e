//! Event history: paging while orders are written concurrently sees every event exactly
//! once, in commit order; filtering by type; one event with its deliveries and attempts.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use orders_service::domain::DeliveryStatus;
use reqwest::Method;
use serde_json::Value;

use uuid::Uuid;

use crate::support::{
    declined_order_body, order_body, AppOptions, Receiver, Reply, TestApp, DEADLINE,
};

const WRITERS: usize = 4;
const ORDERS_PER_WRITER: usize = 30;

#[tokio::test]
async fn paging_while_orders_are_inserted_concurrently_sees_every_event_once_in_order() {
    let app = Arc::new(TestApp::spawn(AppOptions::default()).await);
    // Writers stop halfway until the reader has read a page, so paging is sure to overlap
    // the inserts.
    let (paged_tx, paged_rx) = tokio::sync::watch::channel(false);
    let writers = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut set = tokio::task::JoinSet::new();
            for w in 0..WRITERS {
                let app = app.clone();
                let mut paged = paged_rx.clone();
                set.spawn(async move {
                    let mut ids = Vec::new();
                    for i in 0..ORDERS_PER_WRITER {
                        if i == ORDERS_PER_WRITER / 2 {
                            paged.wait_for(|p| *p).await.unwrap();
                        }
                        let body = if (w + i) % 3 == 0 {
                            declined_order_body()
                        } else {
                            order_body()
                        };
                        let order = app.place_order(body).await;
                        ids.push(order.event_id.expect("the order emitted an event"));
                    }
                    ids
                });
            }
            let mut all = HashSet::new();
            while let Some(ids) = set.join_next().await {
                all.extend(ids.unwrap());
            }
            all
        })
    };

    let mut seen: Vec<(i64, Uuid)> = Vec::new();
    let mut after = String::new();
    let start = Instant::now();
    let mut pages_while_writing = 0;
    loop {
        // Read before paging: an empty page after the writers are done means the end.
        let writers_done = writers.is_finished();
        let page = app.events_page(&format!("limit=7&after={after}")).await;
        let items = &page.items;
        if !writers_done && !items.is_empty() {
            pages_while_writing += 1;
            paged_tx.send_replace(true);
        }
        for item in items {
            let cursor: i64 = item.cursor.parse().unwrap();
            seen.push((cursor, item.id));
            after = cursor.to_string();
        }
        // A cursor only on a full page with more behind it (a full page that happens to
        // end the history has none).
        match &page.next_cursor {
            Some(next) => assert!(items.len() == 7 && *next == after, "{page:?}"),
            None => assert!(items.len() <= 7),
        }
        if items.is_empty() && writers_done {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "paging did not finish");
    }
    assert!(
        pages_while_writing > 0,
        "no page was read while orders were being written"
    );
    let created = writers.await.unwrap();
    assert_eq!(created.len(), WRITERS * ORDERS_PER_WRITER);
    let ids: Vec<Uuid> = seen.iter().map(|(_, id)| *id).collect();
    let unique: HashSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an event was returned twice");
    assert_eq!(unique, created, "the pages hold exactly the events created");
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "events out of order"
    );

    // The type filter pages through the same history.
    let failed = app
        .events_page("type=order.payment_failed&limit=100")
        .await
        .items;
    let expected = (0..WRITERS)
        .flat_map(|w| (0..ORDERS_PER_WRITER).filter(move |i| (w + i) % 3 == 0))
        .count();
    assert_eq!(failed.len(), expected);
    assert!(failed
        .iter()
        .all(|e| e.event_type == "order.payment_failed"));
}

#[tokio::test]
async fn an_event_shows_its_payload_deliveries_and_attempts() {
    let mut receiver = Receiver::start(vec![Reply::status(503)]).await;
    let app = TestApp::spawn(AppOptions::to(&receiver)).await;
    let order = app.place_order(order_body()).await;
    app.wait_for_delivery(order.id, DeliveryStatus::Delivered)
        .await;
    let sent = receiver.next().await;

    let event_id = order.event_id.expect("the order emitted an event");
    let detail = app.event(event_id).await;
    let event = &detail.event;
    assert_eq!(event.event_type, "order.paid");
    assert_eq!(event.order_id, Some(order.id));
    assert_eq!(event.webhook_id, sent.id);
    assert_eq!(
        serde_json::from_str::<Value>(event.payload.get()).unwrap(),
        serde_json::from_slice::<Value>(&sent.body).unwrap()
    );
    // Byte for byte what was signed and sent, keys in their order, not re-serialised.
    let raw = app
        .admin(Method::GET, &format!("/events/{event_id}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sent_text = std::str::from_utf8(&sent.body).unwrap();
    assert!(
        raw.contains(&format!("\"payload\":{sent_text}")),
        "{raw}\n does not hold\n{sent_text}"
    );
    let listed = app.events_page("").await;
    assert_eq!(listed.items[0].payload.get(), event.payload.get());
    assert_eq!(detail.deliveries.len(), 1);
    let delivery = &detail.deliveries[0];
    assert_eq!(delivery.status, "delivered");
    assert_eq!(delivery.attempt_count, 2);
    assert!(delivery.delivered_at.is_some());
    let attempts = delivery.attempts.as_deref().expect("attempts are listed");
    let codes: Vec<_> = attempts.iter().map(|a| a.status_code).collect();
    assert_eq!(codes, [Some(503), Some(200)]);
    assert_eq!(attempts[0].outcome, "retry");

    // The order links to its event.
    let read = app.order(order.id).await;
    assert_eq!(read.event_id, Some(event_id));
    let (status, _) = app
        .admin_json(Method::GET, &format!("/events/{}", Uuid::now_v7()), None)
        .await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test]
async fn an_event_lists_at_most_100_deliveries_and_the_last_20_attempts_of_each() {
    // Many endpoints: one order fans out to 101 deliveries (their URL refuses connections;
    // retries are an hour apart).
    let app = TestApp::spawn(AppOptions {
        schedule: "1h".into(),
        ..AppOptions::default()
    })
    .await;
    for _ in 0..101 {
        let new = orders_service::domain::NewEndpoint {
            url: "http://127.0.0.1:9/webhook".into(),
            description: None,
            event_types: vec!["order.paid".into()],
        };
        app.store
            .create_endpoint(&new, &webhook_common::Secret::generate())
            .await
            .unwrap();
    }
    let order = app.place_order(order_body()).await;
    let event = app.event_of(&order).await;
    assert_eq!(event.delivery_count, 101);
    assert_eq!(event.deliveries.len(), 100);
    app.stop().await;

    // One delivery with 25 attempts: the last 20 are listed, the count says 25.
    let receiver = Receiver::always(Reply::status(500)).await;
    let app = TestApp::spawn(AppOptions {
        schedule: vec!["1ms"; 24].join(","),
        ..AppOptions::to(&receiver)
    })
    .await;
    let order = app.place_order(order_body()).await;
    app.wait_for_delivery(order.id, DeliveryStatus::Failed)
        .await;
    let event = app.event_of(&order).await;
    let delivery = &event.deliveries[0];
    assert_eq!(delivery.attempt_count, 25);
    let attempts = delivery.attempts.as_deref().expect("attempts are listed");
    assert_eq!(attempts.len(), 20);
    assert_eq!(attempts[0].attempt, 6);
    assert_eq!(attempts[19].attempt, 25);
    app.stop().await;
}
