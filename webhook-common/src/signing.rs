//! Standard Webhooks signing and verification, scheme `v1`.
//!
//! The sender signs `{webhook-id}.{webhook-timestamp}.{body}` with HMAC-SHA256 and sends
//!
//! ```text
//! webhook-id: msg_0192f4d27c1e7a519d3b5c1e2f3a4b5c
//! webhook-timestamp: 1763841600
//! webhook-signature: v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=
//! ```
//!
//! Secrets are `whsec_` followed by the base64 of a 24 to 64 byte key. During a key rotation
//! the sender signs with both keys and the signature header carries both signatures,
//! space-separated; a receiver configured with several secrets accepts a match with any of them.
//!
//! The receiver verifies the *raw* body before parsing it, checks the timestamp against a
//! tolerance in both directions (replay protection), and compares signatures in constant time.
//! `webhook-id` is the idempotency key: the same event keeps its id across retries.
//!
//! Specification: <https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md>

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue};
use rand::RngCore as _;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Header carrying the unique message id, stable across retries of one event.
pub const HEADER_ID: &str = "webhook-id";
/// Header carrying the attempt's send time, in whole seconds since the Unix epoch.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying one or more space-separated `version,base64` signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// The prefix of a serialised secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Smallest key the specification allows (192 bits).
pub const MIN_KEY_BYTES: usize = 24;
/// Largest key the specification allows (512 bits).
pub const MAX_KEY_BYTES: usize = 64;
/// Key size of generated secrets (256 bits).
pub const GENERATED_KEY_BYTES: usize = 32;
/// Default allowed distance between `webhook-timestamp` and the receiver's clock.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// Longest `webhook-id` accepted; ids are idempotency keys and get stored.
pub const MAX_ID_LEN: usize = 256;

const SIGNATURE_VERSION: &str = "v1";
const SIGNATURE_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// A signing key. It never shows itself through `Debug`, `Display` or logs; the only way to
/// see it is [`Secret::expose_whsec`], for the admin route whose job is to reveal it.
#[derive(Clone)]
pub struct Secret {
    key: Arc<[u8]>,
    /// HMAC state with the key already absorbed; cloning it saves re-keying on every message.
    keyed: HmacSha256,
}

/// Why a secret was refused. Never contains the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The text does not start with `whsec_`.
    #[error("a webhook secret must start with \"whsec_\" followed by base64 (e.g. one made by `Secret::generate`)")]
    MissingPrefix,
    /// The part after the prefix is not valid base64.
    #[error("the part after \"whsec_\" is not valid base64")]
    InvalidBase64,
    /// The decoded key is shorter or longer than the specification allows.
    #[error("a webhook secret key must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes; this one is {0} bytes")]
    BadLength(usize),
}

impl Secret {
    /// Parses `whsec_<base64 key>`.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = BASE64
            .decode(encoded)
            .map_err(|_| SecretError::InvalidBase64)?;
        Self::from_bytes(&key)
    }

    /// A secret from raw key bytes (24 to 64 of them).
    pub fn from_bytes(key: &[u8]) -> Result<Self, SecretError> {
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(SecretError::BadLength(key.len()));
        }
        let keyed =
            HmacSha256::new_from_slice(key).map_err(|_| SecretError::BadLength(key.len()))?;
        Ok(Secret {
            key: key.into(),
            keyed,
        })
    }

    /// A fresh random 32-byte secret from a CSPRNG seeded by the operating system.
    pub fn generate() -> Self {
        let mut key = [0u8; GENERATED_KEY_BYTES];
        rand::rng().fill_bytes(&mut key);
        // 32 bytes is within bounds, so this cannot fail.
        Self::from_bytes(&key).unwrap_or_else(|_| unreachable!("32-byte keys are valid"))
    }

    /// The secret as `whsec_<base64>`. Only for storing it and for routes that reveal it.
    pub fn expose_whsec(&self) -> String {
        format!("{SECRET_PREFIX}{}", BASE64.encode(&self.key))
    }

    /// The `v1,<base64>` signature of one message under this key.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        format!(
            "{SIGNATURE_VERSION},{}",
            BASE64.encode(self.mac(msg_id, timestamp, body))
        )
    }

    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut mac = self.keyed.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(itoa(timestamp).as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

/// Formats an integer without allocating on the heap.
fn itoa(n: i64) -> ItoaBuf {
    let mut buf = ItoaBuf {
        bytes: [0; 20],
        start: 20,
    };
    let negative = n < 0;
    let mut m = n.unsigned_abs();
    loop {
        buf.start -= 1;
        buf.bytes[buf.start] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    if negative {
        buf.start -= 1;
        buf.bytes[buf.start] = b'-';
    }
    buf
}

struct ItoaBuf {
    bytes: [u8; 20],
    start: usize,
}

impl ItoaBuf {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

impl FromStr for Secret {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Secret::parse(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(whsec_<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("whsec_<redacted>")
    }
}

impl PartialEq for Secret {
    /// Constant-time, so comparing secrets leaks nothing either.
    fn eq(&self, other: &Self) -> bool {
        self.key.ct_eq(&other.key).into()
    }
}

impl Eq for Secret {}

/// The three header values of one signed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp` (seconds since the Unix epoch).
    pub timestamp: i64,
    /// `webhook-signature`: one `v1,<base64>` per secret, space-separated.
    pub signature: String,
}

impl SignedHeaders {
    /// Signs `body` with every secret in `secrets` (more than one during a key rotation).
    pub fn sign(secrets: &[Secret], msg_id: &str, timestamp: i64, body: &[u8]) -> Self {
        let signature = secrets
            .iter()
            .map(|s| s.sign(msg_id, timestamp, body))
            .collect::<Vec<_>>()
            .join(" ");
        SignedHeaders {
            id: msg_id.to_owned(),
            timestamp,
            signature,
        }
    }

    /// The headers as `(name, value)` pairs, ready to add to any HTTP request.
    pub fn to_header_pairs(&self) -> [(&'static str, String); 3] {
        [
            (HEADER_ID, self.id.clone()),
            (HEADER_TIMESTAMP, self.timestamp.to_string()),
            (HEADER_SIGNATURE, self.signature.clone()),
        ]
    }

    /// Adds the three headers to `headers`, replacing any previous values.
    ///
    /// Fails only if `id` contains bytes that are not allowed in a header value.
    pub fn apply(&self, headers: &mut HeaderMap) -> Result<(), http::header::InvalidHeaderValue> {
        for (name, value) in self.to_header_pairs() {
            headers.insert(name, HeaderValue::try_from(value)?);
        }
        Ok(())
    }
}

/// A new message id: `msg_` followed by a time-ordered UUIDv7 in hex.
pub fn new_message_id() -> String {
    format!("msg_{}", uuid::Uuid::now_v7().simple())
}

/// The current time in whole seconds since the Unix epoch, as `webhook-timestamp` wants it.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Why a webhook failed verification. Log it; answer the client a uniform 401 so a forger
/// learns nothing about which part failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A required header is absent.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// A header is present but empty, too long or not printable ASCII.
    #[error("invalid {0} header")]
    InvalidHeader(&'static str),
    /// `webhook-timestamp` is not a whole number of seconds.
    #[error("webhook-timestamp is not an integer number of seconds")]
    MalformedTimestamp,
    /// The timestamp is further in the past than the tolerance (possible replay).
    #[error("webhook-timestamp is {age_secs}s old, beyond the {tolerance_secs}s tolerance")]
    TimestampTooOld {
        /// How far in the past it is.
        age_secs: i64,
        /// The configured tolerance.
        tolerance_secs: i64,
    },
    /// The timestamp is further in the future than the tolerance (clock skew or forgery).
    #[error(
        "webhook-timestamp is {ahead_secs}s in the future, beyond the {tolerance_secs}s tolerance"
    )]
    TimestampTooNew {
        /// How far in the future it is.
        ahead_secs: i64,
        /// The configured tolerance.
        tolerance_secs: i64,
    },
    /// `webhook-signature` has no entry of the form `version,base64`.
    #[error("webhook-signature has no entry of the form \"v1,<base64>\"")]
    MalformedSignature,
    /// Well-formed, but no `v1` signature matched any configured secret.
    #[error("no webhook signature matched any configured secret")]
    NoMatchingSignature,
}

impl VerifyError {
    /// A short stable name for logs and metrics, e.g. `timestamp_too_old`.
    pub fn kind(&self) -> &'static str {
        match self {
            VerifyError::MissingHeader(_) => "missing_header",
            VerifyError::InvalidHeader(_) => "invalid_header",
            VerifyError::MalformedTimestamp => "malformed_timestamp",
            VerifyError::TimestampTooOld { .. } => "timestamp_too_old",
            VerifyError::TimestampTooNew { .. } => "timestamp_too_new",
            VerifyError::MalformedSignature => "malformed_signature",
            VerifyError::NoMatchingSignature => "no_matching_signature",
        }
    }
}

/// What a successful verification establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// `webhook-id`: the idempotency key.
    pub id: String,
    /// `webhook-timestamp` of this attempt.
    pub timestamp: i64,
}

/// Verifies webhooks against one or more secrets. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    secrets: Arc<[Secret]>,
    tolerance_secs: i64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("secrets", &self.secrets.len())
            .field("tolerance_secs", &self.tolerance_secs)
            .finish()
    }
}

impl Verifier {
    /// A verifier accepting a signature by any of `secrets`, with the default 5-minute tolerance.
    ///
    /// # Panics
    /// If `secrets` is empty: a verifier that accepts nothing is a configuration mistake that
    /// must surface at startup.
    pub fn new(secrets: Vec<Secret>) -> Self {
        assert!(!secrets.is_empty(), "a Verifier needs at least one secret");
        Verifier {
            secrets: secrets.into(),
            tolerance_secs: DEFAULT_TOLERANCE.as_secs() as i64,
        }
    }

    /// Parses space-separated `whsec_` secrets, as held by a `WEBHOOK_SECRET` setting.
    pub fn from_secrets_str(text: &str) -> Result<Self, SecretError> {
        let secrets = text
            .split_whitespace()
            .map(Secret::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if secrets.is_empty() {
            return Err(SecretError::MissingPrefix);
        }
        Ok(Verifier::new(secrets))
    }

    /// Sets how far `webhook-timestamp` may be from now, in either direction.
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance_secs = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
        self
    }

    /// The configured secrets.
    pub fn secrets(&self) -> &[Secret] {
        &self.secrets
    }

    /// Verifies `body` against the headers of a request, using the system clock.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<Verified, VerifyError> {
        self.verify_at(headers, body, unix_now())
    }

    /// Like [`Verifier::verify`] with an explicit `now` (seconds since the Unix epoch).
    pub fn verify_at(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, VerifyError> {
        let header = |name: &'static str| -> Result<&str, VerifyError> {
            let value = headers.get(name).ok_or(VerifyError::MissingHeader(name))?;
            value.to_str().map_err(|_| VerifyError::InvalidHeader(name))
        };
        self.verify_parts(
            header(HEADER_ID)?,
            header(HEADER_TIMESTAMP)?,
            header(HEADER_SIGNATURE)?,
            body,
            now,
        )
    }

    /// Verifies from the three header values directly, for frameworks without `http` types.
    pub fn verify_parts(
        &self,
        msg_id: &str,
        timestamp: &str,
        signature_header: &str,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, VerifyError> {
        if msg_id.is_empty()
            || msg_id.len() > MAX_ID_LEN
            || !msg_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(VerifyError::InvalidHeader(HEADER_ID));
        }
        let timestamp = parse_timestamp(timestamp)?;
        self.check_timestamp(timestamp, now)?;

        // Compute each candidate MAC once, then compare every offered v1 signature against
        // every candidate without short-circuiting on content.
        let expected: Vec<[u8; SIGNATURE_LEN]> = self
            .secrets
            .iter()
            .map(|s| s.mac(msg_id, timestamp, body))
            .collect();
        let mut well_formed = false;
        let mut matched = subtle::Choice::from(0);
        for entry in signature_header.split(' ').filter(|e| !e.is_empty()) {
            let Some((version, encoded)) = entry.split_once(',') else {
                continue;
            };
            well_formed = true;
            if version != SIGNATURE_VERSION {
                // Other schemes (e.g. v1a, asymmetric) are allowed alongside; not ours to check.
                continue;
            }
            let mut offered = [0u8; SIGNATURE_LEN];
            match BASE64.decode_slice(encoded, &mut offered) {
                Ok(SIGNATURE_LEN) => {}
                _ => continue,
            }
            for candidate in &expected {
                matched |= candidate.ct_eq(&offered);
            }
        }
        if bool::from(matched) {
            Ok(Verified {
                id: msg_id.to_owned(),
                timestamp,
            })
        } else if well_formed {
            Err(VerifyError::NoMatchingSignature)
        } else {
            Err(VerifyError::MalformedSignature)
        }
    }

    fn check_timestamp(&self, timestamp: i64, now: i64) -> Result<(), VerifyError> {
        let tolerance_secs = self.tolerance_secs;
        let age_secs = now.saturating_sub(timestamp);
        if age_secs > tolerance_secs {
            return Err(VerifyError::TimestampTooOld {
                age_secs,
                tolerance_secs,
            });
        }
        let ahead_secs = timestamp.saturating_sub(now);
        if ahead_secs > tolerance_secs {
            return Err(VerifyError::TimestampTooNew {
                ahead_secs,
                tolerance_secs,
            });
        }
        Ok(())
    }
}

fn parse_timestamp(text: &str) -> Result<i64, VerifyError> {
    // Plain digits only: no sign, no spaces, no fractions. 12 digits reach the year 33658.
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::MalformedTimestamp);
    }
    text.parse().map_err(|_| VerifyError::MalformedTimestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn secret() -> Secret {
        Secret::parse(KEY).unwrap()
    }

    fn verifier() -> Verifier {
        Verifier::new(vec![secret()])
    }

    fn headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER_ID, HeaderValue::from_str(id).unwrap());
        h.insert(HEADER_TIMESTAMP, HeaderValue::from_str(ts).unwrap());
        h.insert(HEADER_SIGNATURE, HeaderValue::from_str(sig).unwrap());
        h
    }

    fn verify(id: &str, ts: &str, sig: &str, now: i64) -> Result<Verified, VerifyError> {
        verifier().verify_at(&headers(id, ts, sig), BODY, now)
    }

    #[test]
    fn signs_the_specification_example() {
        assert_eq!(secret().sign(ID, TS, BODY), SIG);
        assert!(verify(ID, &TS.to_string(), SIG, TS).is_ok());
    }

    #[test]
    fn secrets_never_show_themselves() {
        let s = secret();
        assert!(!format!("{s:?}").contains("MfKQ"));
        assert!(!format!("{s}").contains("MfKQ"));
        assert!(!format!("{:?}", verifier()).contains("MfKQ"));
        assert_eq!(s.expose_whsec(), KEY);
    }

    #[test]
    fn secret_parsing_explains_what_is_wrong() {
        assert_eq!(
            Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(SecretError::MissingPrefix)
        );
        assert_eq!(Secret::parse("whsec_!!!"), Err(SecretError::InvalidBase64));
        assert_eq!(
            Secret::parse("whsec_c2hvcnQ="),
            Err(SecretError::BadLength(5))
        );
        let long = format!("whsec_{}", BASE64.encode([7u8; 65]));
        assert_eq!(Secret::parse(&long), Err(SecretError::BadLength(65)));
        let max = format!("whsec_{}", BASE64.encode([7u8; 64]));
        assert!(Secret::parse(&max).is_ok());
        let err = Secret::parse("whsec_c2hvcnQ=").unwrap_err().to_string();
        assert!(err.contains("24 to 64 bytes"), "{err}");
    }

    #[test]
    fn generated_secrets_are_random_and_round_trip() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_ne!(a, b);
        assert_eq!(Secret::parse(&a.expose_whsec()).unwrap(), a);
        assert!(a.expose_whsec().starts_with("whsec_"));
    }

    #[test]
    fn each_missing_header_is_named() {
        for missing in [HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE] {
            let mut h = headers(ID, &TS.to_string(), SIG);
            h.remove(missing);
            assert_eq!(
                verifier().verify_at(&h, BODY, TS),
                Err(VerifyError::MissingHeader(missing))
            );
        }
    }

    #[test]
    fn non_ascii_and_empty_ids_are_invalid_headers() {
        let mut h = headers(ID, &TS.to_string(), SIG);
        h.insert(
            HEADER_ID,
            HeaderValue::from_bytes("msg_é".as_bytes()).unwrap(),
        );
        assert_eq!(
            verifier().verify_at(&h, BODY, TS),
            Err(VerifyError::InvalidHeader(HEADER_ID))
        );
        assert_eq!(
            verify("", &TS.to_string(), SIG, TS),
            Err(VerifyError::InvalidHeader(HEADER_ID))
        );
        let long = "m".repeat(MAX_ID_LEN + 1);
        assert_eq!(
            verify(&long, &TS.to_string(), SIG, TS),
            Err(VerifyError::InvalidHeader(HEADER_ID))
        );
    }

    #[test]
    fn malformed_timestamps_are_refused() {
        for ts in [
            "",
            "abc",
            "-1614265330",
            "1614265330.5",
            " 1614265330",
            "+1614265330",
            "9999999999999",
        ] {
            assert_eq!(
                verify(ID, ts, SIG, TS),
                Err(VerifyError::MalformedTimestamp),
                "{ts:?}"
            );
        }
    }

    #[test]
    fn tolerance_boundaries_are_inclusive() {
        let tol = DEFAULT_TOLERANCE.as_secs() as i64;
        let ts = TS.to_string();
        assert!(
            verify(ID, &ts, SIG, TS + tol).is_ok(),
            "exactly tolerance old"
        );
        assert!(
            verify(ID, &ts, SIG, TS - tol).is_ok(),
            "exactly tolerance ahead"
        );
        assert_eq!(
            verify(ID, &ts, SIG, TS + tol + 1),
            Err(VerifyError::TimestampTooOld {
                age_secs: tol + 1,
                tolerance_secs: tol
            })
        );
        assert_eq!(
            verify(ID, &ts, SIG, TS - tol - 1),
            Err(VerifyError::TimestampTooNew {
                ahead_secs: tol + 1,
                tolerance_secs: tol
            })
        );
    }

    #[test]
    fn tolerance_is_configurable() {
        let v = verifier().with_tolerance(Duration::from_secs(10));
        let h = headers(ID, &TS.to_string(), SIG);
        assert!(v.verify_at(&h, BODY, TS + 10).is_ok());
        assert!(matches!(
            v.verify_at(&h, BODY, TS + 11),
            Err(VerifyError::TimestampTooOld { .. })
        ));
        assert!(matches!(
            v.verify_at(&h, BODY, TS - 11),
            Err(VerifyError::TimestampTooNew { .. })
        ));
    }

    #[test]
    fn tampering_is_detected() {
        let ts = TS.to_string();
        assert_eq!(
            verifier().verify_at(&headers(ID, &ts, SIG), br#"{"test": 2432232315}"#, TS),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            verify("msg_other", &ts, SIG, TS),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            verify(ID, &(TS + 1).to_string(), SIG, TS),
            Err(VerifyError::NoMatchingSignature)
        );
        let other = Verifier::new(vec![Secret::generate()]);
        assert_eq!(
            other.verify_at(&headers(ID, &ts, SIG), BODY, TS),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn malformed_and_unknown_signatures() {
        let ts = TS.to_string();
        for sig in [
            "",
            " ",
            "garbage",
            "v1",
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ] {
            assert_eq!(
                verify(ID, &ts, sig, TS),
                Err(VerifyError::MalformedSignature),
                "{sig:?}"
            );
        }
        for sig in [
            "v1,",
            "v1,!!!",
            "v1,AAAA",
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "v1a,abc",
        ] {
            assert_eq!(
                verify(ID, &ts, sig, TS),
                Err(VerifyError::NoMatchingSignature),
                "{sig:?}"
            );
        }
    }

    #[test]
    fn any_of_several_signatures_may_match() {
        let ts = TS.to_string();
        let multi = format!(
            "v1a,c29tZXRoaW5n v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= nonsense {SIG}"
        );
        assert!(verify(ID, &ts, &multi, TS).is_ok());
        let doubled_space = format!("v1,AAAA  {SIG}");
        assert!(verify(ID, &ts, &doubled_space, TS).is_ok());
    }

    #[test]
    fn rotation_accepts_old_and_new_secrets() {
        let old = secret();
        let new = Secret::generate();
        let receiver = Verifier::new(vec![new.clone(), old.clone()]);
        let ts = TS.to_string();
        for signer in [&old, &new] {
            let sig = signer.sign(ID, TS, BODY);
            assert!(receiver
                .verify_at(&headers(ID, &ts, &sig), BODY, TS)
                .is_ok());
        }
        // A sender mid-rotation signs with both; a receiver that knows either accepts.
        let both = SignedHeaders::sign(&[new.clone(), old.clone()], ID, TS, BODY);
        assert_eq!(both.signature.split(' ').count(), 2);
        for known in [old, new] {
            let v = Verifier::new(vec![known]);
            assert!(v
                .verify_at(&headers(ID, &ts, &both.signature), BODY, TS)
                .is_ok());
        }
    }

    #[test]
    fn signed_headers_apply_to_a_header_map() {
        let signed = SignedHeaders::sign(&[secret()], ID, TS, BODY);
        let mut h = HeaderMap::new();
        signed.apply(&mut h).unwrap();
        assert_eq!(h[HEADER_SIGNATURE], SIG);
        assert_eq!(h[HEADER_TIMESTAMP], "1614265330");
        assert!(verifier().verify_at(&h, BODY, TS).is_ok());
    }

    #[test]
    fn secrets_string_with_several_secrets() {
        let a = Secret::generate();
        let b = Secret::generate();
        let v =
            Verifier::from_secrets_str(&format!(" {}  {} ", a.expose_whsec(), b.expose_whsec()))
                .unwrap();
        assert_eq!(v.secrets().len(), 2);
        assert!(Verifier::from_secrets_str("   ").is_err());
        assert!(Verifier::from_secrets_str(&format!("{} nope", a.expose_whsec())).is_err());
    }

    #[test]
    fn itoa_matches_display() {
        for n in [0, 1, -1, 9, 10, 1614265330, i64::MAX, i64::MIN] {
            assert_eq!(itoa(n).as_bytes(), n.to_string().as_bytes());
        }
    }

    #[test]
    fn message_ids_are_unique_and_valid_headers() {
        let a = new_message_id();
        assert_ne!(a, new_message_id());
        assert!(a.starts_with("msg_") && a.len() == 36);
        assert!(HeaderValue::from_str(&a).is_ok());
    }
}
