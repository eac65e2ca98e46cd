//! Standard Webhooks (<https://www.standardwebhooks.com>): `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256(key, id.timestamp.body)>`, secrets as `whsec_<base64>`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::{VerifyError, constant_time_eq, hmac_sha256};

/// The prefix of a serialised Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Header names, lower-case as HTTP/2 sends them.
pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// A decoded signing key. Keys shorter than 24 bytes or longer than 64 are refused: the spec
/// recommends 24 to 64 random bytes, and a short key is a weak key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    pub const MIN_LEN: usize = 24;
    pub const MAX_LEN: usize = 64;

    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, VerifyError> {
        if bytes.len() < Self::MIN_LEN {
            return Err(VerifyError::BadSecret("the key must be at least 24 bytes"));
        }
        if bytes.len() > Self::MAX_LEN {
            return Err(VerifyError::BadSecret("the key must be at most 64 bytes"));
        }
        Ok(Self(bytes))
    }

    /// A key that is the UTF-8 bytes of a secret a user typed in (the "raw" format of the
    /// reference libraries). At least 16 bytes, at most 256.
    pub fn from_raw_secret(secret: &str) -> Result<Self, VerifyError> {
        let bytes = secret.as_bytes();
        if bytes.len() < 16 || bytes.len() > 256 {
            return Err(VerifyError::BadSecret(
                "a typed-in secret must be 16 to 256 bytes",
            ));
        }
        Ok(Self(bytes.to_vec()))
    }

    /// The key for a stored secret: `whsec_<base64>` is decoded, anything else is used raw.
    pub fn for_secret(secret: &str) -> Result<Self, VerifyError> {
        if secret.starts_with(SECRET_PREFIX) {
            Self::parse(secret)
        } else {
            Self::from_raw_secret(secret)
        }
    }

    /// Parses `whsec_<base64>` (the prefix is optional, as the reference libraries accept).
    pub fn parse(secret: &str) -> Result<Self, VerifyError> {
        let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
        let bytes = B64
            .decode(encoded)
            .map_err(|_| VerifyError::BadSecret("the part after whsec_ must be base64"))?;
        Self::from_bytes(bytes)
    }

    /// The serialised form, `whsec_<base64>`.
    pub fn to_secret_string(&self) -> String {
        format!("{SECRET_PREFIX}{}", B64.encode(&self.0))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// One signature, `v1,<base64>`.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let ts = timestamp.to_string();
        let mac = hmac_sha256(
            &self.0,
            &[msg_id.as_bytes(), b".", ts.as_bytes(), b".", body],
        );
        // `v1,` and 44 characters of base64, written into one string.
        let mut signature = String::with_capacity(3 + 44);
        signature.push_str("v1,");
        B64.encode_string(mac, &mut signature);
        signature
    }
}

/// The `webhook-signature` value for several keys (during a secret rotation both the new and the
/// old key sign), space-separated as the spec asks.
pub fn signature_header(keys: &[&SigningKey], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    match keys {
        // The usual case, outside a rotation: no list to build and join.
        [key] => key.sign(msg_id, timestamp, body),
        _ => keys
            .iter()
            .map(|key| key.sign(msg_id, timestamp, body))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Verifies a received request: at least one `v1` signature in `signature_header` must match, and
/// `timestamp` must be within `tolerance_secs` of `now`.
pub fn verify(
    key: &SigningKey,
    msg_id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    if signature_header.trim().is_empty() {
        return Err(VerifyError::Missing);
    }
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::Malformed("webhook-timestamp must be unix seconds"))?;
    // `abs_diff`: a timestamp of i64::MIN must be refused, not overflow.
    if now.abs_diff(ts) > u64::try_from(tolerance_secs).unwrap_or(0) {
        return Err(VerifyError::Timestamp);
    }
    let expected = key.sign(msg_id, ts, body);
    let expected = expected.as_bytes();
    let mut any_v1 = false;
    for candidate in signature_header.split_whitespace() {
        if candidate.starts_with("v1,") {
            any_v1 = true;
            if constant_time_eq(candidate.as_bytes(), expected) {
                return Ok(());
            }
        }
    }
    if any_v1 {
        Err(VerifyError::Mismatch)
    } else {
        Err(VerifyError::Malformed("no v1 signature in the header"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
    }

    #[test]
    fn a_signature_matches_the_published_test_vector() {
        // The example from the Standard Webhooks specification.
        let sig = key().sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn the_independent_verifier_accepts_our_signature() {
        let key = key();
        let body = br#"{"type":"user.created","data":{"id":1}}"#;
        // The reference verifier checks the timestamp against the real clock, so sign "now".
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let header = signature_header(&[&key], "msg_1", now, body);
        let wh = standardwebhooks::Webhook::new(&key.to_secret_string()).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", "msg_1".parse().unwrap());
        headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
        headers.insert("webhook-signature", header.parse().unwrap());
        wh.verify(body, &headers).unwrap();
    }

    #[test]
    fn either_key_verifies_during_a_rotation() {
        let old = key();
        let new = SigningKey::from_bytes(vec![7u8; 32]).unwrap();
        let header = signature_header(&[&new, &old], "m", 100, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert_eq!(verify(&old, "m", "100", &header, b"{}", 100, 300), Ok(()));
        assert_eq!(verify(&new, "m", "100", &header, b"{}", 100, 300), Ok(()));
    }

    #[test]
    fn a_tampered_body_or_stale_timestamp_is_refused() {
        let key = key();
        let header = key.sign("m", 100, b"{}");
        assert_eq!(
            verify(&key, "m", "100", &header, b"{ }", 100, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(&key, "m", "100", &header, b"{}", 1000, 300),
            Err(VerifyError::Timestamp)
        );
        assert_eq!(
            verify(&key, "m", "100", "", b"{}", 100, 300),
            Err(VerifyError::Missing)
        );
        // The farthest timestamps are refused, not an overflow (a panic in a debug build).
        for ts in [i64::MIN, i64::MAX] {
            assert_eq!(
                verify(&key, "m", &ts.to_string(), &header, b"{}", 100, 300),
                Err(VerifyError::Timestamp)
            );
        }
    }

    #[test]
    fn a_short_key_is_rejected() {
        assert!(SigningKey::from_bytes(vec![1u8; 8]).is_err());
        assert!(SigningKey::parse("whsec_not base64!").is_err());
    }
}
