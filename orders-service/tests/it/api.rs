//! The orders API: answers, exact money, pagination and every validation error path.

use std::collections::HashSet;

use orders_service::api::orders::OrderResponse;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::{body_as, declined_order_body, json_of, order_body, AppOptions, TestApp};

async fn app() -> TestApp {
    TestApp::spawn(AppOptions::default()).await
}

#[tokio::test]
async fn healthz_answers_ok_once_serving() {
    let app = app().await;
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await, json!({"status": "ok"}));
    app.stop().await;
}

#[tokio::test]
async fn a_new_order_is_paid_with_an_exact_total_and_can_be_read_back() {
    let app = app().await;
    let r = app.post_order(order_body()).await;
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let created: OrderResponse = body_as(r).await;
    assert_eq!(created.status, "paid");
    assert_eq!(created.total, "25.00");
    assert_eq!(created.total_minor, 2500);
    assert_eq!(created.price_per_item, "12.50");
    assert_eq!(created.currency, "EUR");
    assert_eq!(created.failure_reason, None);
    assert_eq!(location, format!("/orders/{}", created.id));

    let fetched = app.order(created.id).await;
    assert_eq!(json!(fetched), json!(created));
    app.stop().await;
}

#[tokio::test]
async fn prices_given_as_decimal_strings_multiply_without_float_error() {
    let app = app().await;
    let r = app
        .post_order(json!({
            "product_name": "Sticker", "quantity": 3, "price_per_item": "0.10",
            "customer_email": "ada@example.com", "currency": "USD"
        }))
        .await;
    assert_eq!(r.status(), 201);
    let v: OrderResponse = body_as(r).await;
    assert_eq!(v.total, "0.30");
    assert_eq!(v.total_minor, 30);
    assert_eq!(v.currency, "USD");
    // 0.1 as a JSON number is read back as the decimal text "0.1", not as a binary float.
    let v = app
        .place_order(json!({
            "product_name": "Sticker", "quantity": 3, "price_per_item": 0.1,
            "customer_email": "ada@example.com"
        }))
        .await;
    assert_eq!(v.total, "0.30");
    app.stop().await;
}

#[tokio::test]
async fn a_declined_payment_gives_a_payment_failed_order_with_a_reason() {
    let app = app().await;
    let v = app.place_order(declined_order_body()).await;
    assert_eq!(v.status, "payment_failed");
    let reason = v.failure_reason.expect("a reason");
    assert!(reason.contains("declined"), "{reason}");
    app.stop().await;
}

/// Posts `body` and checks the answer is a 422 whose `fields` name `field`.
async fn assert_field_error(app: &TestApp, body: Value, field: &str) {
    let r = app.post_order(body.clone()).await;
    assert_eq!(r.status(), 422, "{body}");
    let v = json_of(r).await;
    assert_eq!(v["error"]["code"], "validation_failed", "{v}");
    let messages = &v["error"]["fields"][field];
    assert!(
        messages.as_array().is_some_and(|m| !m.is_empty()),
        "expected a message for {field} from {body}, got {v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains(field),
        "{v}"
    );
}

fn with(field: &str, value: Value) -> Value {
    let mut body = order_body();
    body[field] = value;
    body
}

#[tokio::test]
async fn every_invalid_field_gets_a_422_naming_it_and_nothing_is_stored() {
    let app = app().await;
    let long_name = "x".repeat(201);
    let cases = [
        (with("quantity", json!(0)), "quantity"),
        (with("quantity", json!(1001)), "quantity"),
        (with("quantity", json!(2.5)), "quantity"),
        (with("quantity", json!("2")), "quantity"),
        (with("quantity", json!(-1)), "quantity"),
        (with("price_per_item", json!(12.345)), "price_per_item"),
        (with("price_per_item", json!("12.345")), "price_per_item"),
        (with("price_per_item", json!(0)), "price_per_item"),
        (with("price_per_item", json!(-5)), "price_per_item"),
        (with("price_per_item", json!("abc")), "price_per_item"),
        (with("price_per_item", json!(1e20)), "price_per_item"),
        (
            with("price_per_item", json!("1000000.01")),
            "price_per_item",
        ),
        (
            with("price_per_item", json!("99999999999999999999999")),
            "price_per_item",
        ),
        (with("price_per_item", json!(true)), "price_per_item"),
        (
            with("customer_email", json!("not-an-email")),
            "customer_email",
        ),
        (with("customer_email", json!(42)), "customer_email"),
        (with("product_name", json!("")), "product_name"),
        (with("product_name", json!(" padded")), "product_name"),
        (with("product_name", json!(long_name)), "product_name"),
        (with("product_name", json!("tab\there")), "product_name"),
        (with("currency", json!("eur")), "currency"),
        (with("currency", json!(978)), "currency"),
        (with("simulate_payment", json!("maybe")), "simulate_payment"),
        (with("quantiy", json!(2)), "quantiy"),
    ];
    for (body, field) in cases {
        assert_field_error(&app, body, field).await;
    }

    // Every missing field is reported at once.
    let r = app.post_order(json!({})).await;
    assert_eq!(r.status(), 422);
    let v = json_of(r).await;
    let fields: HashSet<&str> = v["error"]["fields"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        HashSet::from([
            "product_name",
            "quantity",
            "price_per_item",
            "customer_email"
        ])
    );

    let page = app.orders_page("").await;
    assert!(
        page.items.is_empty(),
        "a refused order left something behind: {page:?}"
    );
    assert!(app.store.event_msg_ids_by_order().await.unwrap().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_price_number_with_more_precision_than_f64_keeps_is_refused_not_rounded() {
    let app = app().await;
    let json_ct = Some("application/json");
    let body = |price: &str| {
        format!(
            r#"{{"product_name": "Lamp", "quantity": 1, "price_per_item": {price},
                "customer_email": "ada@example.com"}}"#
        )
    };
    for price in ["12.5000000000000001", "0.001", "1e2", "1.25E1", "12.5e0"] {
        let (status, v) = raw_post(&app, json_ct, body(price)).await;
        assert_eq!(status, 422, "{price}: {v}");
        assert!(
            v["error"]["fields"]["price_per_item"].is_array(),
            "{price}: {v}"
        );
    }
    let (_, v) = raw_post(&app, json_ct, body("1e2")).await;
    assert!(
        v["error"]["fields"]["price_per_item"][0]
            .as_str()
            .unwrap()
            .contains("exponent"),
        "{v}"
    );
    // Exact literals with trailing zeros are fine.
    let (status, v) = raw_post(&app, json_ct, body("12.500000000000000000")).await;
    assert_eq!(status, 201, "{v}");
    let order: OrderResponse = serde_json::from_value(v).unwrap();
    assert_eq!(order.price_per_item, "12.50");
    app.stop().await;
}

async fn raw_post(
    app: &TestApp,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut request = app.http.post(app.url("/orders")).body(body);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    (status, json_of(r).await)
}

#[tokio::test]
async fn malformed_bodies_get_json_errors_with_the_right_status() {
    let app = app().await;
    let json_ct = Some("application/json");

    let (status, v) = raw_post(&app, json_ct, "{\"product_name\": ").await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("malformed_json")),
        "{v}"
    );

    let (status, v) = raw_post(&app, json_ct, "[1, 2]").await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (422, Some("invalid_body")),
        "{v}"
    );

    let (status, v) = raw_post(&app, None, order_body().to_string()).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (415, Some("unsupported_media_type")),
        "{v}"
    );

    let (status, v) = raw_post(&app, Some("text/plain"), order_body().to_string()).await;
    assert_eq!(status, 415, "{v}");

    let mut huge = order_body();
    huge["product_name"] = "x".repeat(100 * 1024).into();
    let (status, v) = raw_post(&app, json_ct, huge.to_string()).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{v}"
    );
    assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_and_ids_answer_json() {
    let app = app().await;
    let r = app.http.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(json_of(r).await["error"]["code"], "no_route");

    let r = app.http.delete(app.url("/orders")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let allow = r
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(allow.is_some_and(|a| a.contains("POST") && a.contains("GET")));
    assert_eq!(json_of(r).await["error"]["code"], "method_not_allowed");

    // A well-formed id that names no order is a 404; one that is not a UUID is a 400 naming
    // the parameter.
    for (id, status, code) in [
        (Uuid::now_v7().to_string(), 404, "not_found"),
        ("not-a-uuid".to_owned(), 400, "invalid_path"),
    ] {
        let r = app
            .http
            .get(app.url(&format!("/orders/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{id}");
        let v = json_of(r).await;
        assert_eq!(v["error"]["code"], code);
        assert!(v["error"]["message"].as_str().unwrap().contains(&id));
        if status == 400 {
            assert!(v["error"]["fields"]["id"].is_array(), "{v}");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn orders_are_listed_newest_first_in_pages_without_gaps_or_repeats() {
    let app = app().await;
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(app.create_order().await);
    }
    created.reverse();
    let mut seen: Vec<Uuid> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &cursor {
            Some(c) => format!("limit=2&cursor={c}"),
            None => "limit=2".to_owned(),
        };
        let page = app.orders_page(&query).await;
        pages += 1;
        seen.extend(page.items.iter().map(|item| item.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created);
    app.stop().await;
}

#[tokio::test]
async fn bad_list_parameters_are_client_errors() {
    let app = app().await;
    for (query, parameter) in [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=abc", "limit"),
        ("limit=1&limit=2", "limit"),
        ("cursor=zzz", "cursor"),
    ] {
        let r = app
            .admin(reqwest::Method::GET, &format!("/orders?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let body = json_of(r).await;
        assert_eq!(body["error"]["code"], "invalid_query", "{query}: {body}");
        assert!(
            body["error"]["fields"][parameter].is_array(),
            "{query}: {body}"
        );
    }
    let r = app
        .admin(reqwest::Method::GET, "/orders?limit=200")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_failing_outbox_write_leaves_no_order_behind() {
    let receiver = crate::support::Receiver::start(Vec::new()).await;
    let app = TestApp::spawn(AppOptions::to(&receiver)).await;
    // Make the last write of the transaction (the delivery row) fail.
    let db = app.dir.path().join("orders.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_deliveries BEFORE INSERT ON deliveries \
         BEGIN SELECT RAISE(ABORT, 'refused by test'); END",
    )
    .execute(&pool)
    .await
    .unwrap();

    let r = app.post_order(order_body()).await;
    assert_eq!(r.status(), 500);
    let v = json_of(r).await;
    assert_eq!(v["error"]["code"], "internal_error");
    assert!(
        !v.to_string().contains("refused by test"),
        "internals leaked: {v}"
    );

    let page = app.orders_page("").await;
    assert!(page.items.is_empty(), "{page:?}");
    assert!(app.store.event_msg_ids_by_order().await.unwrap().is_empty());
    pool.close().await;
    app.stop().await;
}
