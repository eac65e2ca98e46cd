//! Sign and verify every webhook signature scheme Herald speaks.
//!
//! This crate knows nothing of the server: it takes bytes and secrets and gives header values, so a
//! receiver can depend on it alone to check what Herald sends. Every comparison is constant-time.
//!
//! | scheme | header value | signed bytes |
//! |---|---|---|
//! | [`standard`] (Standard Webhooks) | `v1,<base64>` (space-separated list) | `id.timestamp.body` |
//! | [`hex`] (Optare style) | `<hex>` | `body` |
//! | [`hub`] (WebSub `x-hub-signature`) | `sha256=<hex>` | `body` |
//! | [`opal`] | `<hex>` | `v0:timestamp:body` |

// The workspace denies unsafe code (one call in `herald` is allowed where it is written);
// this crate has none at all.
#![forbid(unsafe_code)]

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub mod hex;
pub mod hub;
pub mod opal;
pub mod standard;

type HmacSha256 = Hmac<Sha256>;

/// Why a signature did not verify. Deliberately coarse: a verifier should not tell an attacker
/// which part was wrong beyond what the header format already shows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("the signature header is missing or empty")]
    Missing,
    #[error("the signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error("the secret is malformed: {0}")]
    BadSecret(&'static str),
    #[error("the timestamp is outside the allowed tolerance")]
    Timestamp,
    #[error("no signature matches")]
    Mismatch,
}

/// HMAC-SHA256 over the concatenation of `parts`, without copying them into one buffer.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}
