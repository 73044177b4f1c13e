//! Sending signed webhooks with reqwest.

use bytes::Bytes;

use crate::event::Event;
use crate::signing::{unix_now, Secret, SignedHeaders};

/// Builds a signed `POST` of `body` to `url`: `content-type: application/json` plus the three
/// Standard Webhooks headers, timestamped now and signed with every secret in `secrets` (more
/// than one during a rotation).
///
/// `msg_id` must be the same on every retry of one event: receivers deduplicate on it. Send
/// the exact same `body` bytes on every retry too (a `Bytes` clone is free); they are what is
/// signed.
pub fn signed_request(
    client: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    secrets: &[Secret],
    msg_id: &str,
    body: impl Into<Bytes>,
) -> reqwest::RequestBuilder {
    let body: Bytes = body.into();
    let signed = SignedHeaders::sign(secrets, msg_id, unix_now(), &body);
    let mut request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    for (name, value) in signed.to_header_pairs() {
        request = request.header(name, value);
    }
    request.body(body)
}

/// Like [`signed_request`], serialising `event` as the body.
pub fn signed_event_request(
    client: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    secrets: &[Secret],
    msg_id: &str,
    event: &Event,
) -> reqwest::RequestBuilder {
    signed_request(client, url, secrets, msg_id, event.to_json_bytes())
}
