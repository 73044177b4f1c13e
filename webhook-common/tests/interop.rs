//! Interoperability with an implementation we did not write: the `standardwebhooks` crate.

use http::{HeaderMap, HeaderValue};
use webhook_common::signing::{
    new_message_id, unix_now, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP,
};
use webhook_common::{Secret, SignedHeaders, Verifier};

const BODY: &[u8] = br#"{"type":"order.paid","timestamp":"2026-11-22T20:07:03Z","data":{"order_id":"0192f4d2-7c1e-7a51-9d3b-5c1e2f3a4b5c","customer_email":"ada@example.com","product_name":"Keyboard","quantity":2,"amount":2500,"currency":"EUR"}}"#;

fn headers(id: &str, ts: i64, signature: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(HEADER_ID, HeaderValue::from_str(id).unwrap());
    h.insert(HEADER_TIMESTAMP, HeaderValue::from(ts));
    h.insert(HEADER_SIGNATURE, HeaderValue::from_str(signature).unwrap());
    h
}

#[test]
fn our_signatures_verify_with_standardwebhooks() {
    for _ in 0..20 {
        let secret = Secret::generate();
        let theirs = standardwebhooks::Webhook::new(&secret.expose_whsec()).unwrap();
        let id = new_message_id();
        let signed = SignedHeaders::sign(std::slice::from_ref(&secret), &id, unix_now(), BODY);
        let mut h = HeaderMap::new();
        signed.apply(&mut h).unwrap();
        theirs
            .verify(BODY, &h)
            .expect("standardwebhooks accepts our signature");
    }
}

#[test]
fn their_signatures_verify_with_ours() {
    for _ in 0..20 {
        let secret = Secret::generate();
        let theirs = standardwebhooks::Webhook::new(&secret.expose_whsec()).unwrap();
        let id = new_message_id();
        let ts = unix_now();
        let signature = theirs.sign(&id, ts, BODY).unwrap();
        assert_eq!(
            signature,
            secret.sign(&id, ts, BODY),
            "byte-identical signatures"
        );
        Verifier::new(vec![secret])
            .verify(&headers(&id, ts, &signature), BODY)
            .expect("we accept standardwebhooks' signature");
    }
}

#[test]
fn rotation_header_with_two_signatures_verifies_with_standardwebhooks() {
    let old = Secret::generate();
    let new = Secret::generate();
    let id = new_message_id();
    let signed = SignedHeaders::sign(&[new.clone(), old.clone()], &id, unix_now(), BODY);
    let mut h = HeaderMap::new();
    signed.apply(&mut h).unwrap();
    for secret in [old, new] {
        let theirs = standardwebhooks::Webhook::new(&secret.expose_whsec()).unwrap();
        theirs.verify(BODY, &h).expect("either key verifies");
    }
}

#[test]
fn both_reject_a_tampered_body() {
    let secret = Secret::generate();
    let theirs = standardwebhooks::Webhook::new(&secret.expose_whsec()).unwrap();
    let id = new_message_id();
    let ts = unix_now();
    let signature = theirs.sign(&id, ts, BODY).unwrap();
    let h = headers(&id, ts, &signature);
    let mut tampered = BODY.to_vec();
    tampered[10] ^= 1;
    assert!(theirs.verify(&tampered, &h).is_err());
    assert!(Verifier::new(vec![secret]).verify(&h, &tampered).is_err());
}
