//! Property tests for the signature parsers, which read headers an attacker controls.

use herald_signature::standard::{SigningKey, signature_header, verify};
use herald_signature::{hex, hub, opal};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    // PROPTEST_CASES runs more (or fewer); 512 by default keeps the suite quick.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn secret_parsing_never_panics(raw in ".{0,120}") {
        let _ = SigningKey::parse(&raw);
        let _ = SigningKey::for_secret(&raw);
    }

    #[test]
    fn garbage_headers_never_verify_and_never_panic(
        id in ".{0,40}", ts in ".{0,20}", header in ".{0,200}", body in prop::collection::vec(any::<u8>(), 0..200)
    ) {
        let key = SigningKey::from_bytes(vec![7u8; 32]).unwrap();
        prop_assert!(verify(&key, &id, &ts, &header, &body, 1_700_000_000, 300).is_err());
        prop_assert!(hex::verify("s3cret-s3cret-s3cret", &header, &body).is_err());
        prop_assert!(hub::verify("s3cret-s3cret-s3cret", &header, &body).is_err());
        prop_assert!(opal::verify("s3cret-s3cret-s3cret", &ts, &header, &body, 1_700_000_000, 300).is_err());
    }

    #[test]
    fn a_signature_verifies_only_for_its_own_body(
        key in prop::collection::vec(any::<u8>(), 24..64),
        body in prop::collection::vec(any::<u8>(), 0..300),
        other in prop::collection::vec(any::<u8>(), 0..300),
        ts in 0i64..4_000_000_000,
    ) {
        let key = SigningKey::from_bytes(key).unwrap();
        let header = signature_header(&[&key], "msg_1", ts, &body);
        prop_assert!(verify(&key, "msg_1", &ts.to_string(), &header, &body, ts, 300).is_ok());
        if other != body {
            prop_assert!(verify(&key, "msg_1", &ts.to_string(), &header, &other, ts, 300).is_err());
        }
    }
}
