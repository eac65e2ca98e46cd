//! Opal: `X-Opal-Signature: hex(HMAC-SHA256(secret, "v0:" + timestamp + ":" + body))` with the
//! timestamp in `X-Opal-Request-Timestamp` (unix seconds).

use crate::{VerifyError, constant_time_eq, hmac_sha256};

pub const HEADER_TIMESTAMP: &str = "X-Opal-Request-Timestamp";
pub const HEADER_SIGNATURE: &str = "X-Opal-Signature";

pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    hex::encode(hmac_sha256(
        secret.as_bytes(),
        &[b"v0:", ts.as_bytes(), b":", body],
    ))
}

/// Verifies a received request: the signature must match, and `timestamp` must be within
/// `tolerance_secs` of `now` (unix seconds), so that a captured request cannot be replayed later.
pub fn verify(
    secret: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::Malformed("the timestamp must be unix seconds"))?;
    if signature.trim().is_empty() {
        return Err(VerifyError::Missing);
    }
    if now.abs_diff(ts) > u64::try_from(tolerance_secs).unwrap_or(0) {
        return Err(VerifyError::Timestamp);
    }
    if constant_time_eq(
        signature.trim().as_bytes(),
        sign(secret, ts, body).as_bytes(),
    ) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use crate::VerifyError;

    #[test]
    fn the_timestamp_is_part_of_what_is_signed() {
        let sig = super::sign("k", 10, b"{}");
        assert!(super::verify("k", "10", &sig, b"{}", 10, 300).is_ok());
        assert!(super::verify("k", "11", &sig, b"{}", 10, 300).is_err());
    }

    #[test]
    fn an_old_or_far_future_request_is_refused_even_when_signed() {
        let sig = super::sign("k", 1_000, b"{}");
        assert!(super::verify("k", "1000", &sig, b"{}", 1_300, 300).is_ok());
        assert!(matches!(
            super::verify("k", "1000", &sig, b"{}", 1_301, 300),
            Err(VerifyError::Timestamp)
        ));
        assert!(matches!(
            super::verify("k", "1000", &sig, b"{}", 699, 300),
            Err(VerifyError::Timestamp)
        ));
        let min = i64::MIN.to_string();
        assert!(super::verify("k", &min, &sig, b"{}", 1_000, 300).is_err());
    }
}
