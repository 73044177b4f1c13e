//! The Standard Webhooks known-answer vectors, checked in as data (see `data/`'s `source`).

use serde::Deserialize;
use webhook_common::{Secret, Verifier, VerifyError};

#[derive(Deserialize)]
struct File {
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    name: String,
    secret: String,
    msg_id: String,
    timestamp: i64,
    payload: String,
    signature: String,
    valid: bool,
}

fn vectors() -> Vec<Vector> {
    let text = include_str!("data/standard-webhooks-vectors.json");
    let file: File = serde_json::from_str(text).expect("vector file parses");
    assert!(file.vectors.iter().any(|v| v.valid), "no positive vectors");
    assert!(file.vectors.iter().any(|v| !v.valid), "no negative vectors");
    file.vectors
}

#[test]
fn known_answers_sign_to_the_published_signature() {
    for v in vectors().iter().filter(|v| v.valid) {
        let secret = Secret::parse(&v.secret).unwrap();
        assert_eq!(
            secret.sign(&v.msg_id, v.timestamp, v.payload.as_bytes()),
            v.signature,
            "{}",
            v.name
        );
    }
}

#[test]
fn every_vector_verifies_exactly_when_it_should() {
    let vectors = vectors();
    for v in &vectors {
        let verifier = Verifier::new(vec![Secret::parse(&v.secret).unwrap()]);
        let result = verifier.verify_parts(
            &v.msg_id,
            &v.timestamp.to_string(),
            &v.signature,
            v.payload.as_bytes(),
            v.timestamp,
        );
        if v.valid {
            assert!(result.is_ok(), "{}: {result:?}", v.name);
        } else {
            assert!(
                matches!(
                    result,
                    Err(VerifyError::NoMatchingSignature | VerifyError::MalformedSignature)
                ),
                "{}: {result:?}",
                v.name
            );
        }
    }
}
