//! The customer emails: what an order event says, in words.

use uuid::Uuid;
use webhook_common::{Event, EventPayload, OrderPaid, OrderPaymentFailed};

use crate::store::{OrderEmail, OrderEventKind};

/// The email an event asks for, or `None` for event types this service does not handle.
pub fn render(event: &Event) -> Option<OrderEmail> {
    match &event.payload {
        EventPayload::OrderPaid(paid) => Some(confirmation(paid)),
        EventPayload::OrderPaymentFailed(failed) => Some(payment_failed(failed)),
        EventPayload::Unknown { .. } => None,
    }
}

fn short(order_id: Uuid) -> String {
    order_id.simple().to_string().chars().take(8).collect()
}

/// The order confirmation for `order.paid`.
pub fn confirmation(paid: &OrderPaid) -> OrderEmail {
    let subject = format!(
        "Order {} confirmed: {}",
        short(paid.order_id),
        paid.product_name
    );
    let body = format!(
        "Hello,\n\
         \n\
         thank you for your order. We have received your payment and your order is confirmed.\n\
         \n\
         Order:     {order_id}\n\
         Product:   {product}\n\
         Quantity:  {quantity}\n\
         Total paid: {total}\n\
         \n\
         We will let you know when it ships.\n\
         \n\
         -- \n\
         The Shop\n",
        order_id = paid.order_id,
        product = paid.product_name,
        quantity = paid.quantity,
        total = paid.total(),
    );
    OrderEmail {
        kind: OrderEventKind::Paid,
        order_id: paid.order_id,
        to: paid.customer_email.clone(),
        subject,
        body,
    }
}

/// The notice for `order.payment_failed`.
pub fn payment_failed(failed: &OrderPaymentFailed) -> OrderEmail {
    let subject = format!(
        "Payment failed for order {}: action needed",
        short(failed.order_id)
    );
    let body = format!(
        "Hello,\n\
         \n\
         we could not take the payment for your order, so it is on hold.\n\
         \n\
         Order:    {order_id}\n\
         Product:  {product}\n\
         Amount:   {total}\n\
         Reason:   {reason}\n\
         \n\
         Nothing has been charged. Please try again, for example with another card, to\n\
         complete your order.\n\
         \n\
         -- \n\
         The Shop\n",
        order_id = failed.order_id,
        product = failed.product_name,
        total = failed.total(),
        reason = failed.reason,
    );
    OrderEmail {
        kind: OrderEventKind::PaymentFailed,
        order_id: failed.order_id,
        to: failed.customer_email.clone(),
        subject,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webhook_common::Currency;

    #[test]
    fn confirmation_names_order_product_quantity_and_exact_total() {
        let order_id = Uuid::now_v7();
        let email = confirmation(&OrderPaid {
            order_id,
            customer_email: "ada@example.com".into(),
            product_name: "Mechanical keyboard".into(),
            quantity: 2,
            amount: 2500,
            currency: Currency::EUR,
        });
        assert_eq!(email.to, "ada@example.com");
        assert!(email.subject.contains("confirmed"), "{}", email.subject);
        for needle in [
            order_id.to_string().as_str(),
            "Mechanical keyboard",
            "Quantity:  2",
            "25.00 EUR",
        ] {
            assert!(
                email.body.contains(needle),
                "{needle:?} missing in {}",
                email.body
            );
        }
    }

    #[test]
    fn payment_failure_has_its_own_text_with_the_reason() {
        let email = payment_failed(&OrderPaymentFailed {
            order_id: Uuid::now_v7(),
            customer_email: "ada@example.com".into(),
            product_name: "Desk lamp".into(),
            amount: 1999,
            currency: Currency::USD,
            reason: "card declined".into(),
        });
        assert!(
            email.subject.starts_with("Payment failed"),
            "{}",
            email.subject
        );
        assert!(email.body.contains("card declined"));
        assert!(email.body.contains("19.99 USD"));
        assert!(!email.body.contains("confirmed"));
    }
}
