//! Property tests: anything signed verifies, and any single-byte change breaks it.

use proptest::prelude::*;
use webhook_common::{Secret, Verifier, VerifyError};

fn secret() -> impl Strategy<Value = Secret> {
    proptest::collection::vec(any::<u8>(), 24..=64).prop_map(|k| Secret::from_bytes(&k).unwrap())
}

/// Ids are printable ASCII without spaces, as a header value must be.
fn msg_id() -> impl Strategy<Value = String> {
    "[!-~]{1,64}"
}

const NOW: i64 = 1_763_841_600;

fn timestamp() -> impl Strategy<Value = i64> {
    // Anywhere within the default tolerance of NOW.
    (NOW - 300)..=(NOW + 300)
}

fn verify(secret: &Secret, id: &str, ts: &str, sig: &str, body: &[u8]) -> Result<(), VerifyError> {
    Verifier::new(vec![secret.clone()])
        .verify_parts(id, ts, sig, body, NOW)
        .map(|_| ())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn anything_signed_verifies(
        secret in secret(),
        id in msg_id(),
        ts in timestamp(),
        body in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let sig = secret.sign(&id, ts, &body);
        prop_assert_eq!(verify(&secret, &id, &ts.to_string(), &sig, &body), Ok(()));
    }

    #[test]
    fn any_single_byte_change_to_the_body_fails(
        secret in secret(),
        id in msg_id(),
        ts in timestamp(),
        body in proptest::collection::vec(any::<u8>(), 1..2048),
        index in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let sig = secret.sign(&id, ts, &body);
        let mut changed = body.clone();
        let i = index.index(changed.len());
        changed[i] ^= flip;
        prop_assert_eq!(
            verify(&secret, &id, &ts.to_string(), &sig, &changed),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn any_single_byte_change_to_the_id_fails(
        secret in secret(),
        id in msg_id(),
        ts in timestamp(),
        body in proptest::collection::vec(any::<u8>(), 0..512),
        index in any::<prop::sample::Index>(),
        replacement in 0x21u8..=0x7e,
    ) {
        let sig = secret.sign(&id, ts, &body);
        let mut changed = id.clone().into_bytes();
        let i = index.index(changed.len());
        prop_assume!(changed[i] != replacement);
        changed[i] = replacement;
        let changed = String::from_utf8(changed).unwrap();
        prop_assert_eq!(
            verify(&secret, &changed, &ts.to_string(), &sig, &body),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn any_single_digit_change_to_the_timestamp_fails(
        secret in secret(),
        id in msg_id(),
        ts in timestamp(),
        body in proptest::collection::vec(any::<u8>(), 0..512),
        index in any::<prop::sample::Index>(),
        digit in b'0'..=b'9',
    ) {
        let sig = secret.sign(&id, ts, &body);
        let mut changed = ts.to_string().into_bytes();
        let i = index.index(changed.len());
        prop_assume!(changed[i] != digit);
        changed[i] = digit;
        let changed = String::from_utf8(changed).unwrap();
        // A changed timestamp either leaves the tolerance window or breaks the signature.
        let result = verify(&secret, &id, &changed, &sig, &body);
        prop_assert!(result.is_err(), "{:?}", result);
    }

    #[test]
    fn a_different_secret_never_verifies(
        a in secret(),
        b in secret(),
        id in msg_id(),
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        prop_assume!(a != b);
        let sig = a.sign(&id, NOW, &body);
        prop_assert_eq!(
            verify(&b, &id, &NOW.to_string(), &sig, &body),
            Err(VerifyError::NoMatchingSignature)
        );
    }
}
