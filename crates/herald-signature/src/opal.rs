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

pub fn verify(
    secret: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::Malformed("the timestamp must be unix seconds"))?;
    if signature.trim().is_empty() {
        return Err(VerifyError::Missing);
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
    #[test]
    fn the_timestamp_is_part_of_what_is_signed() {
        let sig = super::sign("k", 10, b"{}");
        assert!(super::verify("k", "10", &sig, b"{}").is_ok());
        assert!(super::verify("k", "11", &sig, b"{}").is_err());
    }
}
