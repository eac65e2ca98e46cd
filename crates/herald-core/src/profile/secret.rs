//! How each profile makes and checks secrets.

use rand::RngCore;

use herald_signature::standard::SigningKey;

use crate::Invalid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretPolicy {
    /// Standard Webhooks: generated as `whsec_` + base64 of 32 random bytes.
    StandardKey,
    /// Generated as 64 hex characters (32 random bytes), used as the HMAC key as text.
    Hex,
    /// The user types the secret in; none is generated.
    UserSupplied,
}

impl SecretPolicy {
    /// A fresh secret from a CSPRNG, or `None` when the user must supply one.
    pub fn generate(self) -> Option<String> {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        match self {
            Self::StandardKey => Some(
                SigningKey::from_bytes(key.to_vec())
                    .expect("32 bytes is a valid key length")
                    .to_secret_string(),
            ),
            Self::Hex => Some(hex::encode(key)),
            Self::UserSupplied => None,
        }
    }

    /// Checks a secret the user supplied. `whsec_…` must decode to a 24-to-64-byte key; any
    /// other secret must be 16 to 256 visible ASCII characters.
    pub fn parse(self, raw: &str) -> Result<String, Invalid> {
        if raw.trim() != raw {
            // Not trimmed: the secret is the HMAC key as typed, and the receiver's copy may
            // have them or not; only the user knows.
            return Err(Invalid::new(
                "secret",
                "has spaces or line breaks at its start or end; send the secret alone, exactly \
                 as the receiver has it",
            ));
        }
        if raw.starts_with(herald_signature::standard::SECRET_PREFIX) {
            let key = SigningKey::parse(raw).map_err(|e| {
                Invalid::new(
                    "secret",
                    format!("{e}; a whsec_ secret is base64 of 24 to 64 random bytes"),
                )
            })?;
            return Ok(key.to_secret_string());
        }
        if raw.starts_with(ENCRYPTED_MARK) {
            // The store marks secrets it encrypted this way; a plain one that looked the same
            // would be taken for ciphertext and could not be read back.
            return Err(Invalid::new(
                "secret",
                format!(
                    "may not begin with '{ENCRYPTED_MARK}' (Herald marks encrypted secrets so); choose another"
                ),
            ));
        }
        if raw.len() < 16 || raw.len() > 256 || !raw.bytes().all(|b| b.is_ascii_graphic()) {
            // Only where Herald makes one: permit's is the user's to choose.
            let or_generated = if self == Self::UserSupplied {
                ""
            } else {
                "; omit it to have one generated"
            };
            return Err(Invalid::new(
                "secret",
                format!(
                    "must be 16 to 256 visible ASCII characters (or a whsec_ Standard Webhooks \
                     secret){or_generated}"
                ),
            ));
        }
        Ok(raw.to_owned())
    }
}

/// How the store's encrypted secrets begin (`enc:v1:<key id>:…`); no secret a user supplies may.
pub const ENCRYPTED_MARK: &str = "enc:";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_have_their_profiles_shape() {
        let standard = SecretPolicy::StandardKey.generate().unwrap();
        assert!(standard.starts_with("whsec_"));
        assert_eq!(
            SecretPolicy::StandardKey.parse(&standard).unwrap(),
            standard
        );
        let hex = SecretPolicy::Hex.generate().unwrap();
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(SecretPolicy::UserSupplied.generate(), None);
    }

    #[test]
    fn a_short_or_spaced_secret_is_refused() {
        assert!(SecretPolicy::UserSupplied.parse("hunter2").is_err());
        assert!(
            SecretPolicy::UserSupplied
                .parse("correct horse battery staple")
                .is_err()
        );
        assert!(
            SecretPolicy::UserSupplied
                .parse("whsec_not-base64")
                .is_err()
        );
        assert!(
            SecretPolicy::UserSupplied
                .parse("correct-horse-battery-staple")
                .is_ok()
        );
        // Not trimmed into another key than the receiver's.
        for padded in [
            "  correct-horse-battery-staple",
            "correct-horse-battery-staple\n",
        ] {
            let refused = SecretPolicy::UserSupplied.parse(padded).unwrap_err();
            assert!(refused.message.contains("at its start or end"), "{refused}");
        }
        let looks_encrypted = SecretPolicy::UserSupplied
            .parse("enc:v1:deadbeef:AAAAAAAAAAAAAAAAAAAA")
            .unwrap_err();
        assert!(
            looks_encrypted.message.contains("enc:"),
            "{looks_encrypted}"
        );
    }
}
