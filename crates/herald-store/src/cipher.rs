//! Encryption at rest for webhook secrets (XChaCha20-Poly1305), on when the operator gives a key
//! (`HERALD_ENCRYPTION_KEY`). A stored secret reads `enc:v2:<key id>:<base64 nonce+ciphertext>`,
//! sealed for its place (the webhook's id and the field, as associated data): moved to another
//! webhook or field by someone who can write the database but lacks the key, it does not open,
//! so a receiver's credentials cannot be redirected to an endpoint of theirs. `enc:v1:` (sealed
//! for no place, by earlier versions) still opens. A plain one (written before a key was set) is
//! read as it is, and every start (`herald serve` or `herald migrate`) re-encrypts what is plain,
//! `v1` or sealed with an old key.
//!
//! Rotating the key: make the new key `HERALD_ENCRYPTION_KEY`, list the old one in
//! `HERALD_ENCRYPTION_OLD_KEYS` so stored secrets still open, start Herald once (or run
//! `herald migrate`), then drop the old key.
//!
//! Old keys without a current one open what was sealed with them and seal nothing: several
//! nodes sharing a database first learn a new key so (one restart each), then seal with it, so
//! that no node meets a secret sealed with a key it lacks. A node that meets one anyway (started
//! without a key the others seal with) cannot serve those webhooks: it says so
//! ([`SecretCipher::missing_key_trouble`]), for `/readyz`, so that a load balancer stops
//! sending it work, and its API answers `503` rather than `500`, so that producers send again.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Sealed for a place (see the module's documentation).
const PREFIX: &str = "enc:v2:";
/// Sealed by earlier versions, for no place: opened, and sealed again on the next start.
const PREFIX_V1: &str = "enc:v1:";
/// The one key of a webhook's custom headers as stored sealed: their JSON, encrypted whole. A
/// header name cannot contain `:`, so a map of real headers is never taken for sealed ones.
const SEALED_HEADERS: &str = ":sealed";

type Headers = std::collections::BTreeMap<String, String>;

/// One key and its short id (the first 8 hex characters of its SHA-256).
struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl Key {
    fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let bytes = hex_or_base64(raw).ok_or_else(|| {
            "an encryption key must be 32 random bytes, as 64 hex characters or base64 (e.g. `openssl rand -hex 32`)".to_owned()
        })?;
        let id = hex_prefix(&Sha256::digest(&bytes));
        let cipher = XChaCha20Poly1305::new_from_slice(&bytes)
            .map_err(|_| "the key must be 32 bytes".to_owned())?;
        Ok(Self { id, cipher })
    }
}

fn hex_or_base64(raw: &str) -> Option<Vec<u8>> {
    let from_hex = (raw.len() == 64)
        .then(|| {
            (0..32)
                .map(|i| u8::from_str_radix(&raw[2 * i..2 * i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>()
        })
        .flatten();
    from_hex
        .or_else(|| B64.decode(raw).ok())
        .filter(|b| b.len() == 32)
}

/// Where a sealed value is kept: its webhook and field, its associated data.
pub fn place(webhook: &str, field: &str) -> String {
    format!("{webhook}/{field}")
}

fn hex_prefix(digest: &[u8]) -> String {
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// Seals and opens stored secrets. Without keys it stores them as they are.
#[derive(Default)]
pub struct SecretCipher {
    current: Option<Key>,
    old: Vec<Key>,
    /// The first key met that this node is not given: a stored secret sealed with it.
    missing: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for SecretCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCipher")
            .field("key", &self.current.as_ref().map(|k| &k.id))
            .field(
                "old_keys",
                &self.old.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CipherError {
    pub message: String,
    /// The secret was sealed with a key this node is not given (not a damaged value).
    pub missing_key: bool,
}

impl CipherError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            missing_key: false,
        }
    }
}

/// Whether the error (or one it was caused by) is a stored secret sealed with a key this
/// node is not given.
pub fn is_missing_key(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| e.source()).any(|e| {
        e.downcast_ref::<CipherError>()
            .is_some_and(|c| c.missing_key)
    })
}

fn failed(e: CipherError) -> herald_core::store::StoreError {
    herald_core::store::StoreError::Other(Box::new(e))
}

impl SecretCipher {
    /// No encryption: secrets are stored as they are.
    pub fn none() -> Self {
        Self::default()
    }

    /// `current` seals and opens; the `old` keys open only (empty ones, as a list's trailing
    /// comma makes, are passed over).
    pub fn new(current: Option<&str>, old: &[String]) -> Result<Self, CipherError> {
        let current = current.map(Key::parse).transpose().map_err(|e| {
            CipherError::new(format!(
                "the encryption key (HERALD_ENCRYPTION_KEY, --encryption-key): {e}"
            ))
        })?;
        let old: Vec<Key> = old
            .iter()
            .enumerate()
            .filter(|(_, k)| !k.trim().is_empty())
            .map(|(i, k)| {
                Key::parse(k).map_err(|e| {
                    CipherError::new(format!(
                        "HERALD_ENCRYPTION_OLD_KEYS, key {} of {}: {e}",
                        i + 1,
                        old.len()
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            current,
            old,
            missing: Default::default(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.current.is_some()
    }

    /// Why this node cannot serve some webhooks, once it met a secret sealed with a key it is
    /// not given (for `/readyz`); it stays until the node is restarted with the key.
    pub fn missing_key_trouble(&self) -> Option<String> {
        let missing = self.missing.lock().unwrap_or_else(|p| p.into_inner());
        missing.as_ref().map(|id| {
            format!(
                "a stored secret was sealed with encryption key {id}, which this node is not \
                 given: it cannot serve the webhooks sealed so. Give it the keys the other nodes \
                 have (HERALD_ENCRYPTION_KEY, HERALD_ENCRYPTION_OLD_KEYS) and restart it"
            )
        })
    }

    /// The form to store of `secret`, kept at `place` (`<webhook id>/<field>`): it opens only
    /// there.
    pub fn seal(&self, secret: &str, place: &str) -> String {
        let Some(key) = &self.current else {
            return secret.to_owned();
        };
        if secret.is_empty() {
            return String::new();
        }
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        let payload = Payload {
            msg: secret.as_bytes(),
            aad: place.as_bytes(),
        };
        let sealed = key
            .cipher
            .encrypt(XNonce::from_slice(&nonce), payload)
            .expect("encryption with a valid key cannot fail");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        format!("{PREFIX}{}:{}", key.id, B64.encode(blob))
    }

    /// The secret from its stored form, kept at `place`.
    ///
    /// A `v1` value whose content is itself sealed (`enc:v2:…`) is opened twice: a Herald from
    /// before `v2` that ran again on this database after an upgrade (a downgrade) took the `v2`
    /// values for plain ones and sealed them again. No user's secret or header looks sealed
    /// (both are refused), so this content can only be that. A previous secret may have been
    /// sealed as the secret: the older Herald rotated it there.
    pub fn open(&self, stored: &str, place: &str) -> Result<String, CipherError> {
        let plain = self.open_once(stored, place)?;
        if !(stored.starts_with(PREFIX_V1) && plain.starts_with(PREFIX)) {
            return Ok(plain);
        }
        match place.strip_suffix("/previous_secret") {
            Some(webhook) => self
                .open_once(&plain, place)
                .or_else(|_| self.open_once(&plain, &format!("{webhook}/secret"))),
            None => self.open_once(&plain, place),
        }
    }

    fn open_once(&self, stored: &str, place: &str) -> Result<String, CipherError> {
        let (rest, aad) = match (stored.strip_prefix(PREFIX), stored.strip_prefix(PREFIX_V1)) {
            (Some(rest), _) => (rest, place.as_bytes()),
            (None, Some(rest)) => (rest, &[][..]),
            (None, None) => return Ok(stored.to_owned()),
        };
        let (id, blob) = rest
            .split_once(':')
            .ok_or_else(|| CipherError::new("a stored secret is malformed"))?;
        let key = self
            .current
            .iter()
            .chain(&self.old)
            .find(|k| k.id == id)
            .ok_or_else(|| {
                let mut missing = self.missing.lock().unwrap_or_else(|p| p.into_inner());
                missing.get_or_insert_with(|| id.to_owned());
                CipherError {
                    message: format!(
                        "a stored secret was encrypted with key {id}, which is not configured; set it as HERALD_ENCRYPTION_KEY or in HERALD_ENCRYPTION_OLD_KEYS"
                    ),
                    missing_key: true,
                }
            })?;
        let blob = B64
            .decode(blob)
            .map_err(|_| CipherError::new("a stored secret is malformed"))?;
        if blob.len() < 24 {
            return Err(CipherError::new("a stored secret is malformed"));
        }
        let (nonce, sealed) = blob.split_at(24);
        let payload = Payload { msg: sealed, aad };
        let plain = key
            .cipher
            .decrypt(XNonce::from_slice(nonce), payload)
            .map_err(|_| {
                CipherError::new(format!(
                    "a stored secret does not open with key {id} where it is ({place}): it was \
                     sealed with another key of that id, or for another webhook or field"
                ))
            })?;
        String::from_utf8(plain).map_err(|_| CipherError::new("a stored secret is malformed"))
    }

    /// A copy of the webhook with its secrets in their stored form.
    pub fn seal_webhook(&self, w: &herald_core::webhook::Webhook) -> herald_core::webhook::Webhook {
        let mut w = w.clone();
        let id = w.id.as_str();
        w.secret = self.seal(&w.secret, &place(id, "secret"));
        w.previous_secret = w
            .previous_secret
            .as_deref()
            .map(|s| self.seal(s, &place(id, "previous_secret")));
        // Custom headers often carry the receiver's credentials (`Authorization`): they are
        // kept like the secrets.
        w.headers = self.seal_headers(&w.headers, id);
        w
    }

    /// The webhook with its stored secrets opened.
    pub fn open_webhook(
        &self,
        mut w: herald_core::webhook::Webhook,
    ) -> herald_core::store::StoreResult<herald_core::webhook::Webhook> {
        let id = w.id.to_string();
        let open = |s: &str, field: &str| self.open(s, &place(&id, field)).map_err(failed);
        w.secret = open(&w.secret, "secret")?;
        w.previous_secret = w
            .previous_secret
            .as_deref()
            .map(|s| open(s, "previous_secret"))
            .transpose()?;
        w.headers = self
            .open_headers(std::mem::take(&mut w.headers), &id)
            .map_err(failed)?;
        Ok(w)
    }

    /// Custom headers in their stored form: sealed whole, as the one entry
    /// [`SEALED_HEADERS`], when a key is configured.
    fn seal_headers(&self, headers: &Headers, webhook: &str) -> Headers {
        if !self.enabled() || headers.is_empty() {
            return headers.clone();
        }
        let json = serde_json::to_string(headers).expect("a map of strings serialises");
        Headers::from([(
            SEALED_HEADERS.to_owned(),
            self.seal(&json, &place(webhook, "headers")),
        )])
    }

    /// Custom headers from their stored form; a map of real headers is plain, whatever its
    /// values look like.
    fn open_headers(&self, stored: Headers, webhook: &str) -> Result<Headers, CipherError> {
        match stored.get(SEALED_HEADERS) {
            Some(blob) if stored.len() == 1 => {
                serde_json::from_str(&self.open(blob, &place(webhook, "headers"))?)
                    .map_err(|_| CipherError::new("stored custom headers are malformed"))
            }
            _ => Ok(stored),
        }
    }

    /// Stored custom headers (their JSON, as [`Self::seal_webhook`] wrote it) sealed with the
    /// current key, or `None` when they need no rewrite (sealed with it already, empty, or no
    /// key is configured).
    pub fn reseal_headers(
        &self,
        stored: &str,
        webhook: &str,
    ) -> Result<Option<String>, CipherError> {
        let stored: Headers = serde_json::from_str(stored)
            .map_err(|_| CipherError::new("stored custom headers are malformed"))?;
        let current = stored.len() == 1
            && stored
                .get(SEALED_HEADERS)
                .is_some_and(|blob| !self.is_stale(blob));
        if !self.enabled() || stored.is_empty() || current {
            return Ok(None);
        }
        let sealed = self.seal_headers(&self.open_headers(stored, webhook)?, webhook);
        Ok(Some(
            serde_json::to_string(&sealed).expect("a map of strings serialises"),
        ))
    }

    /// A stored value sealed again with the current key for its place, if it needs it (plain,
    /// `v1`, or sealed with an old key); `None` when it is current.
    pub fn reseal(&self, stored: &str, place: &str) -> Result<Option<String>, CipherError> {
        if !self.is_stale(stored) {
            return Ok(None);
        }
        Ok(Some(self.seal(&self.open(stored, place)?, place)))
    }

    /// Whether a stored value should be written again (plain, `v1`, or sealed with an old key).
    pub fn is_stale(&self, stored: &str) -> bool {
        match &self.current {
            None => false,
            Some(key) => !stored.is_empty() && !stored.starts_with(&format!("{PREFIX}{}:", key.id)),
        }
    }
}

/// A stored webhook's sealed columns as the current key seals them, those that need it (both
/// backends' re-encryption). Without a key, nothing needs it, but each must open.
pub(crate) struct Resealed {
    secret: Option<String>,
    previous: Option<String>,
    headers: Option<String>,
}

impl Resealed {
    pub(crate) fn of(
        cipher: &SecretCipher,
        webhook: &str,
        secret: &str,
        previous: Option<&str>,
        headers: &str,
    ) -> Result<Self, CipherError> {
        if !cipher.enabled() {
            // Nothing is sealed without a key, but what was sealed must still open: a server
            // started without the key it sealed with would otherwise fail every attempt and
            // every event of the webhook while it looks healthy.
            cipher.open(secret, &place(webhook, "secret"))?;
            if let Some(previous) = previous {
                cipher.open(previous, &place(webhook, "previous_secret"))?;
            }
            let headers: Headers = serde_json::from_str(headers)
                .map_err(|_| CipherError::new("stored custom headers are malformed"))?;
            cipher.open_headers(headers, webhook)?;
            return Ok(Self {
                secret: None,
                previous: None,
                headers: None,
            });
        }
        Ok(Self {
            secret: cipher.reseal(secret, &place(webhook, "secret"))?,
            previous: previous
                .map(|p| cipher.reseal(p, &place(webhook, "previous_secret")))
                .transpose()?
                .flatten(),
            headers: cipher.reseal_headers(headers, webhook)?,
        })
    }

    /// The row to write (`secret`, `previous_secret`, `headers`), or `None` if nothing changed.
    pub(crate) fn into_row(
        self,
        secret: String,
        previous: Option<String>,
        headers: String,
    ) -> Option<(String, Option<String>, String)> {
        if self.secret.is_none() && self.previous.is_none() && self.headers.is_none() {
            return None;
        }
        Some((
            self.secret.unwrap_or(secret),
            self.previous.or(previous),
            self.headers.unwrap_or(headers),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";
    const HERE: &str = "wh_1/secret";

    #[test]
    fn a_sealed_secret_opens_and_does_not_show() {
        let c = SecretCipher::new(Some(K1), &[]).unwrap();
        let sealed = c.seal("whsec_supersecret", HERE);
        assert!(sealed.starts_with("enc:v2:") && !sealed.contains("supersecret"));
        // Users may not choose a secret that looks sealed (the webhook's secret is refused).
        assert!(sealed.starts_with(herald_core::profile::ENCRYPTED_MARK));
        assert_ne!(
            sealed,
            c.seal("whsec_supersecret", HERE),
            "a fresh nonce each time"
        );
        assert_eq!(c.open(&sealed, HERE).unwrap(), "whsec_supersecret");
    }

    #[test]
    fn a_sealed_value_opens_only_where_it_was_sealed_for() {
        let c = SecretCipher::new(Some(K1), &[]).unwrap();
        let sealed = c.seal("Bearer receiver-token", &place("wh_a", "headers"));
        // Copied into another webhook's row, or into another field of the same one.
        for elsewhere in [place("wh_b", "headers"), place("wh_a", "secret")] {
            let err = c.open(&sealed, &elsewhere).unwrap_err();
            assert!(
                err.message.contains("for another webhook or field"),
                "{err}"
            );
        }
        assert_eq!(
            c.open(&sealed, &place("wh_a", "headers")).unwrap(),
            "Bearer receiver-token"
        );
    }

    #[test]
    fn a_value_sealed_by_an_earlier_version_opens_and_is_sealed_again_for_its_place() {
        let c = SecretCipher::new(Some(K1), &[]).unwrap();
        // `enc:v1:`, as earlier versions wrote it: sealed with no associated data.
        let key = Key::parse(K1).unwrap();
        let nonce = [7u8; 24];
        let mut blob = nonce.to_vec();
        blob.extend(
            key.cipher
                .encrypt(XNonce::from_slice(&nonce), b"s".as_ref())
                .unwrap(),
        );
        let v1 = format!("{PREFIX_V1}{}:{}", key.id, B64.encode(blob));
        assert_eq!(c.open(&v1, HERE).unwrap(), "s");
        assert!(c.is_stale(&v1));
        let again = c.reseal(&v1, HERE).unwrap().expect("v1 is sealed again");
        assert!(again.starts_with("enc:v2:"));
        assert_eq!(c.open(&again, HERE).unwrap(), "s");
        assert_eq!(c.reseal(&again, HERE).unwrap(), None);
    }

    /// A Herald from before `v2` run again after an upgrade took a `v2` value for a plain one
    /// and sealed it as `v1`: it opens to the secret, and the next start seals it as it should be.
    #[test]
    fn a_value_sealed_again_by_an_earlier_version_after_an_upgrade_opens_to_the_secret() {
        let c = SecretCipher::new(Some(K1), &[]).unwrap();
        let v2 = c.seal("whsec_supersecret", HERE);
        let key = Key::parse(K1).unwrap();
        let nonce = [9u8; 24];
        let mut blob = nonce.to_vec();
        blob.extend(
            key.cipher
                .encrypt(XNonce::from_slice(&nonce), v2.as_bytes())
                .unwrap(),
        );
        let twice = format!("{PREFIX_V1}{}:{}", key.id, B64.encode(blob));
        assert_eq!(c.open(&twice, HERE).unwrap(), "whsec_supersecret");
        let again = c.reseal(&twice, HERE).unwrap().expect("sealed again");
        assert!(again.starts_with(PREFIX));
        assert_eq!(c.open(&again, HERE).unwrap(), "whsec_supersecret");
        // Only a v1 value is opened twice: a v2 one holding a sealed-looking text is not.
        let odd = c.seal(&v2, HERE);
        assert_eq!(c.open(&odd, HERE).unwrap(), v2);
        // A secret rotated under the older Herald: sealed for the secret's place, kept as the
        // previous one.
        assert_eq!(
            c.open(&twice, "wh_1/previous_secret").unwrap(),
            "whsec_supersecret"
        );
    }

    #[test]
    fn a_rotated_key_still_opens_old_secrets_and_marks_them_stale() {
        let old = SecretCipher::new(Some(K1), &[]).unwrap();
        let sealed = old.seal("s", HERE);
        let rotated = SecretCipher::new(Some(K2), &[K1.into()]).unwrap();
        assert_eq!(rotated.open(&sealed, HERE).unwrap(), "s");
        assert!(rotated.is_stale(&sealed));
        assert!(!rotated.is_stale(&rotated.seal("s", HERE)));
        let without_old = SecretCipher::new(Some(K2), &[]).unwrap();
        assert_eq!(without_old.missing_key_trouble(), None);
        let err = without_old.open(&sealed, HERE).unwrap_err();
        assert!(err.message.contains("not configured"), "{err}");
        assert!(is_missing_key(&herald_core::store::StoreError::Other(
            Box::new(err)
        )));
        // Said for `/readyz` from then on, naming the key.
        let trouble = without_old.missing_key_trouble().expect("said");
        let k1 = SecretCipher::new(Some(K1), &[])
            .unwrap()
            .current
            .unwrap()
            .id;
        assert!(trouble.contains(&k1), "{trouble}");
        // A damaged value is no missing key.
        let damaged = without_old.open("enc:v2:nope", HERE).unwrap_err();
        assert!(!damaged.missing_key);
    }

    /// The first step of turning encryption on across nodes: a key known only as an old one
    /// opens what was sealed with it, and nothing is sealed or due to be.
    #[test]
    fn old_keys_without_a_current_one_open_and_seal_nothing() {
        let sealed = SecretCipher::new(Some(K1), &[]).unwrap().seal("s", HERE);
        let learning = SecretCipher::new(None, &[K1.into()]).unwrap();
        assert!(!learning.enabled());
        assert_eq!(learning.open(&sealed, HERE).unwrap(), "s");
        assert_eq!(learning.seal("s", HERE), "s");
        assert!(!learning.is_stale(&sealed) && !learning.is_stale("s"));
        assert_eq!(learning.reseal(&sealed, HERE).unwrap(), None);
    }

    #[test]
    fn custom_headers_are_sealed_whole_and_resealed_like_secrets() {
        let old = SecretCipher::new(Some(K1), &[]).unwrap();
        let plain = r#"{"authorization":"Bearer receiver-token","x-team":"id"}"#;
        let sealed = old
            .reseal_headers(plain, "wh_1")
            .unwrap()
            .expect("plain headers are sealed");
        assert!(!sealed.contains("receiver-token") && !sealed.contains("authorization"));
        assert_eq!(
            old.reseal_headers(&sealed, "wh_1").unwrap(),
            None,
            "already current"
        );
        // Another webhook's sealed headers do not open here.
        assert!(
            old.open_headers(serde_json::from_str(&sealed).unwrap(), "wh_2")
                .is_err()
        );
        let rotated = SecretCipher::new(Some(K2), &[K1.into()]).unwrap();
        let again = rotated
            .reseal_headers(&sealed, "wh_1")
            .unwrap()
            .expect("an old key's");
        let opened = rotated
            .open_headers(serde_json::from_str(&again).unwrap(), "wh_1")
            .unwrap();
        assert_eq!(opened["authorization"], "Bearer receiver-token");
        assert_eq!(rotated.reseal_headers(&again, "wh_1").unwrap(), None);
        // Without a key, and for values that merely look sealed, headers stay as they are.
        assert_eq!(
            SecretCipher::none().reseal_headers(plain, "wh_1").unwrap(),
            None
        );
        let look_alike = Headers::from([("x-token".to_owned(), "enc:v2:k:abc".to_owned())]);
        assert_eq!(
            SecretCipher::none()
                .open_headers(look_alike.clone(), "wh_1")
                .unwrap(),
            look_alike
        );
        assert_eq!(
            old.open_headers(look_alike.clone(), "wh_1").unwrap(),
            look_alike
        );
    }

    #[test]
    fn plain_secrets_read_as_they_are() {
        let c = SecretCipher::new(Some(K1), &[]).unwrap();
        assert_eq!(c.open("whsec_plain", HERE).unwrap(), "whsec_plain");
        assert!(c.is_stale("whsec_plain"));
        assert!(SecretCipher::new(Some("short"), &[]).is_err());
    }

    /// A key that is not one says which setting, and which of the old keys, it is.
    #[test]
    fn a_bad_key_is_named() {
        let error = |current: &str, old: &[&str]| {
            let old: Vec<String> = old.iter().map(|k| (*k).to_owned()).collect();
            SecretCipher::new(Some(current), &old).unwrap_err().message
        };
        assert!(error("zz", &[]).starts_with("the encryption key (HERALD_ENCRYPTION_KEY, "));
        assert!(error(K1, &[K2, "zz"]).starts_with("HERALD_ENCRYPTION_OLD_KEYS, key 2 of 2: "));
        // Counted as written, empty places too.
        assert!(error(K1, &["", "", "zz"]).starts_with("HERALD_ENCRYPTION_OLD_KEYS, key 3 of 3: "));
    }
}
