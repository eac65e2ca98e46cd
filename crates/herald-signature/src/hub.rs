//! WebSub-style `x-hub-signature: sha256=<hex HMAC-SHA256(secret, body)>`.

use crate::{VerifyError, constant_time_eq, hmac_sha256};

pub const PREFIX: &str = "sha256=";

pub fn sign(secret: &str, body: &[u8]) -> String {
    format!(
        "{PREFIX}{}",
        hex::encode(hmac_sha256(secret.as_bytes(), &[body]))
    )
}

pub fn verify(secret: &str, header: &str, body: &[u8]) -> Result<(), VerifyError> {
    let header = header.trim();
    if header.is_empty() {
        return Err(VerifyError::Missing);
    }
    if !header.starts_with(PREFIX) {
        return Err(VerifyError::Malformed("expected sha256=<hex>"));
    }
    if constant_time_eq(header.as_bytes(), sign(secret, body).as_bytes()) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_hub_signature_carries_the_algorithm_prefix() {
        let sig = super::sign("k", b"x");
        assert!(sig.starts_with("sha256="));
        assert!(super::verify("k", &sig, b"x").is_ok());
        assert!(super::verify("k", &sig[7..], b"x").is_err());
    }
}
