//! The read API, health, and the JSON shape of routing errors.

use serde_json::Value;
use uuid::Uuid;

use crate::support::*;

#[tokio::test]
async fn health_answers_ok_without_a_token() {
    let app = TestApp::spawn().await;
    let r = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ok");
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_json_errors() {
    let app = TestApp::spawn().await;
    let r = app
        .http
        .get(format!("{}/nope", app.base))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "not_found").await;
    let r = app.http.get(app.intake()).send().await.unwrap();
    assert!(r.headers().contains_key("allow"));
    assert_error(r, 405, "method_not_allowed").await;
    let r = app
        .http
        .delete(format!("{}/notifications", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_error(r, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn the_read_api_requires_the_admin_token() {
    let app = TestApp::spawn().await;
    let url = format!("{}/notifications", app.base);
    let r = app.http.get(&url).send().await.unwrap();
    assert_error(r, 401, "unauthorized").await;
    let r = app
        .http
        .get(&url)
        .bearer_auth("wrong-token-wrong-token")
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
    let r = app
        .http
        .get(&url)
        .header("authorization", format!("Basic {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
    let r = app
        .http
        .get(format!("{}/notifications/{}", app.base, Uuid::now_v7()))
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
    let (status, _) = app.admin_get("/notifications").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn notifications_page_newest_first_with_a_cursor_and_show_the_body_by_id() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let id = msg_id();
        let r = app.deliver(&id, &paid(Uuid::now_v7(), now())).await;
        assert_eq!(r.status(), 202);
        ids.push(id);
    }
    app.worker.drain().await.unwrap();

    let first = app.notifications_page("limit=2").await;
    let cursor = first.next_cursor.clone().expect("a second page");
    let second = app
        .notifications_page(&format!("limit=2&cursor={cursor}"))
        .await;
    let cursor = second.next_cursor.clone().expect("a third page");
    let third = app
        .notifications_page(&format!("limit=2&cursor={cursor}"))
        .await;
    assert_eq!(third.next_cursor, None);
    let seen: Vec<String> = [&first, &second, &third]
        .iter()
        .flat_map(|p| p.items.iter())
        .map(|i| i.webhook_id.clone())
        .collect();
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    // The exact shape of a list item, on purpose as raw JSON: every field is present (even
    // when null) and the email text is not.
    let (status, raw) = app.admin_get("/notifications?limit=1").await;
    assert_eq!(status, 200);
    let raw_item = &raw["items"][0];
    for field in [
        "id",
        "webhook_id",
        "event_type",
        "order_id",
        "to",
        "subject",
        "status",
        "attempts",
        "created_at",
        "sent_at",
    ] {
        assert!(
            raw_item.get(field).is_some(),
            "{field} missing in {raw_item}"
        );
    }
    assert!(raw_item.get("body").is_none(), "{raw_item}");

    let item = &first.items[0];
    assert_eq!(item.status, Status::Sent);
    assert_eq!(item.attempts, 1);
    assert!(item.body.is_none());
    assert!(item.sent_at.is_some(), "{item:?}");

    let one = app.notification(item.id).await;
    assert_eq!(one.id, item.id);
    assert!(one
        .body
        .as_deref()
        .unwrap_or_else(|| panic!("no body: {one:?}"))
        .contains("Mechanical keyboard"));
}

#[tokio::test]
async fn bad_query_parameters_and_ids_are_400_and_unknown_ids_404() {
    let app = TestApp::spawn().await;
    for query in [
        "limit=0",
        "limit=201",
        "limit=abc",
        "cursor=garbage",
        "limit=1&limit=2",
    ] {
        let (status, body) = app.admin_get(&format!("/notifications?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query");
        let parameter = if query.starts_with("cursor") {
            "cursor"
        } else {
            "limit"
        };
        assert!(
            body["error"]["fields"][parameter].is_array(),
            "{query}: {body}"
        );
    }
    let (status, body) = app.admin_get("/webhooks/received?limit=201").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["fields"]["limit"].is_array(), "{body}");
    let (status, body) = app.admin_get("/notifications/not-a-uuid").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_path");
    assert!(body["error"]["fields"]["id"].is_array(), "{body}");
    let (status, body) = app
        .admin_get(&format!("/notifications/{}", Uuid::now_v7()))
        .await;
    assert_eq!(status, 404, "{body}");
}
