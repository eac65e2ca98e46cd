//! Plain hex HMAC-SHA256 of the body (Optare's `X-Optare-Signature`). The key is the secret
//! string's UTF-8 bytes, exactly as `crypto.createHmac("sha256", secret)` uses it.

use crate::{VerifyError, constant_time_eq, hmac_sha256};

pub fn sign(secret: &str, body: &[u8]) -> String {
    hex::encode(hmac_sha256(secret.as_bytes(), &[body]))
}

pub fn verify(secret: &str, signature: &str, body: &[u8]) -> Result<(), VerifyError> {
    let signature = signature.trim();
    if signature.is_empty() {
        return Err(VerifyError::Missing);
    }
    if constant_time_eq(signature.as_bytes(), sign(secret, body).as_bytes()) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sign_then_verify_round_trips_and_detects_tampering() {
        let sig = super::sign("s3cret", b"{\"a\":1}");
        assert_eq!(sig.len(), 64);
        assert!(super::verify("s3cret", &sig, b"{\"a\":1}").is_ok());
        assert!(super::verify("s3cret", &sig, b"{\"a\":2}").is_err());
        assert!(super::verify("other", &sig, b"{\"a\":1}").is_err());
    }
}
