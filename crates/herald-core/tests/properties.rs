//! Property tests for the parsers that take untrusted input (cargo fuzz needs a nightly
//! toolchain, which this project's machines do not have; these run with every test run).
//! Each property runs 512 generated cases; set PROPTEST_CASES to run more.

use proptest::prelude::*;
use serde_json::{Map, Value};

use herald_core::event::NewEvent;
use herald_core::js_json;
use herald_core::webhook::{WebhookUrl, parse_headers};

/// Arbitrary JSON values, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("[a-z0-9_]{0,6}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

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
    fn event_parsing_never_panics_and_accepted_data_is_an_object(raw in json_value()) {
        if let Ok(event) = NewEvent::parse(raw) {
            prop_assert_eq!(event.data.get().as_bytes()[0], b'{');
        }
    }

    /// Events parsed from their text (the producer API's path, which keeps data that is already
    /// in the stored form as it is) come out exactly as events parsed from a tree, whether the
    /// producer wrote compact JSON or pretty-printed it.
    #[test]
    fn parsing_the_text_agrees_with_parsing_the_tree(data in json_value(), pretty in any::<bool>()) {
        let event = serde_json::json!({"type": "user.created", "id": "evt_1", "data": data});
        let text = if pretty {
            serde_json::to_string_pretty(&event).unwrap()
        } else {
            serde_json::to_string(&event).unwrap()
        };
        let raw: Box<serde_json::value::RawValue> = serde_json::from_str(&text).unwrap();
        let from_text = NewEvent::parse_text(&raw);
        let from_tree = NewEvent::parse(serde_json::from_str(&text).unwrap());
        match (from_text, from_tree) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a.data.get(), b.data.get()),
            (Err(a), Err(b)) => prop_assert_eq!((a.field, a.message), (b.field, b.message)),
            (a, b) => prop_assert!(false, "text: {:?}, tree: {:?}", a, b),
        }
    }

    /// What the fast check accepts as already written the JavaScript way is exactly that.
    #[test]
    fn text_accepted_as_javascript_exact_is(value in json_value()) {
        let text = serde_json::to_string(&value).unwrap();
        if js_json::is_written_as_javascript_writes_it(&text, 64) {
            prop_assert_eq!(js_json::to_string(&value), text);
        }
    }

    #[test]
    fn any_event_shaped_input_either_parses_or_names_a_field(
        event_type in ".{0,20}",
        id in proptest::option::of(".{0,20}"),
        data in json_value(),
    ) {
        let mut obj = Map::new();
        obj.insert("type".into(), Value::String(event_type));
        obj.insert("data".into(), data);
        if let Some(id) = id {
            obj.insert("id".into(), Value::String(id));
        }
        match NewEvent::parse(Value::Object(obj)) {
            Ok(e) => prop_assert!(!e.event_type.is_empty()),
            Err(e) => prop_assert!(!e.field.is_empty() && !e.message.is_empty()),
        }
    }

    /// What Herald writes is exactly what JavaScript writes back after parsing it, so a
    /// receiver that re-serialises (Opal's verifier) sees the bytes that were signed.
    #[test]
    fn javascript_json_is_a_fixed_point(value in json_value()) {
        let once = js_json::to_string(&value);
        let parsed: Value = serde_json::from_str(&once).expect("Herald writes valid JSON");
        prop_assert_eq!(js_json::to_string(&parsed), once);
    }

    #[test]
    fn numbers_read_back_to_the_same_double(x in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
        let text = js_json::number(x);
        let back: f64 = text.parse().expect("a JavaScript number literal parses");
        prop_assert_eq!(back, if x == 0.0 { 0.0 } else { x });
    }

    #[test]
    fn url_parsing_never_panics_and_keeps_only_http_urls_with_hosts(raw in ".{0,80}") {
        if let Ok(url) = WebhookUrl::parse(&raw) {
            prop_assert!(url.as_str().starts_with("http://") || url.as_str().starts_with("https://"));
            prop_assert!(url.as_str().len() <= WebhookUrl::MAX_LEN);
        }
    }

    #[test]
    fn urlish_inputs_never_panic(scheme in "(https?|ftp|javascript|)", host in "[a-zA-Z0-9.\\[\\]:@%-]{0,30}", rest in "[ -~]{0,30}") {
        let _ = WebhookUrl::parse(&format!("{scheme}://{host}/{rest}"));
    }

    #[test]
    fn header_parsing_never_panics(pairs in prop::collection::btree_map(".{0,20}", ".{0,40}", 0..25)) {
        if let Ok(headers) = parse_headers(pairs) {
            prop_assert!(headers.len() <= 20);
            prop_assert!(headers.keys().all(|k| !k.contains("signature") && k != "host"));
        }
    }
}
