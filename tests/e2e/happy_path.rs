//! The promise in its simplest form: one paid order, one confirmation email.

use crate::support::{read_json, Demo};

#[tokio::test]
async fn a_paid_order_produces_one_confirmation_email_with_its_details() {
    let demo = Demo::start().await;
    let order = demo.create_order(Demo::order_body("ada@example.com")).await;
    let order_id = order.id.to_string();

    let all = demo
        .wait_for_one_sent_email_per_order(std::slice::from_ref(&order_id))
        .await;
    let email = all.iter().find(|n| n.order_id == order_id).unwrap();
    assert_eq!(email.to, "ada@example.com");
    assert_eq!(email.event_type, "order.paid");

    let detail_url = demo
        .notifications
        .url(&format!("/notifications/{}", email.id));
    let detail = read_json(
        demo.http
            .get(detail_url)
            .bearer_auth(&demo.admin_token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let body = detail["body"]
        .as_str()
        .unwrap_or_else(|| demo.fail(&format!("no body: {detail}")));
    for expected in [order_id.as_str(), "Mechanical keyboard", "25.00 EUR"] {
        assert!(
            body.contains(expected),
            "email body lacks {expected:?}:\n{body}"
        );
    }
    assert!(
        body.lines()
            .any(|l| l.contains("Quantity") && l.trim_end().ends_with(" 2")),
        "email body lacks the quantity 2:\n{body}"
    );
}
