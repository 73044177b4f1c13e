//! Sign and verify a typical 400-byte payload, ours next to the `standardwebhooks` crate.
//!
//! Run with `cargo bench -p webhook-common --bench signing`.
#![allow(missing_docs)] // criterion_group! generates undocumented items.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use webhook_common::signing::unix_now;
use webhook_common::{Secret, SignedHeaders, Verifier};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ID: &str = "msg_0192f4d27c1e7a519d3b5c1e2f3a4b5c";

fn payload() -> Vec<u8> {
    let body = br#"{"type":"order.paid","timestamp":"2026-11-22T20:07:03.123456Z","data":{"order_id":"0192f4d2-7c1e-7a51-9d3b-5c1e2f3a4b5c","customer_email":"ada.lovelace@example.com","product_name":"Mechanical keyboard with hot-swappable switches and a very long descriptive name for padding","quantity":2,"amount":2500,"currency":"EUR","note":"padding to reach a typical payload size of about four hundred bytes....."}}"#;
    assert!(
        (390..=410).contains(&body.len()),
        "payload is {} bytes",
        body.len()
    );
    body.to_vec()
}

fn bench(c: &mut Criterion) {
    let body = payload();
    let ts = unix_now();
    let ours = Secret::parse(SECRET).unwrap();
    let verifier = Verifier::new(vec![ours.clone()]);
    let theirs = standardwebhooks::Webhook::new(SECRET).unwrap();

    let mut headers = HeaderMap::new();
    SignedHeaders::sign(std::slice::from_ref(&ours), ID, ts, &body)
        .apply(&mut headers)
        .unwrap();

    let mut group = c.benchmark_group("sign_400B");
    group.bench_function("webhook-common", |b| {
        b.iter(|| ours.sign(black_box(ID), black_box(ts), black_box(&body)))
    });
    group.bench_function("standardwebhooks", |b| {
        b.iter(|| {
            theirs
                .sign(black_box(ID), black_box(ts), black_box(&body))
                .unwrap()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("verify_400B");
    group.bench_function("webhook-common", |b| {
        b.iter(|| {
            verifier
                .verify(black_box(&headers), black_box(&body))
                .unwrap()
        })
    });
    group.bench_function("standardwebhooks", |b| {
        b.iter(|| {
            theirs
                .verify(black_box(&body), black_box(&headers))
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
