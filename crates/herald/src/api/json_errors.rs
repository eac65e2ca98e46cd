//! Parsing a JSON body into what an operation takes, with errors that say what is wrong and
//! where, in JSON's terms: not UTF-8 (and which encoding it looks like), not JSON, a field of
//! the wrong shape, a required field missing.

use axum::http::StatusCode;

use super::error::ApiError;

/// Parses a JSON body, answering `400 invalid_json` with serde's account of what is wrong:
/// JSON that does not parse, or JSON of another shape than the operation takes. A required
/// field left out or given as `null` is `422 invalid_field` naming it, as a value out of range
/// is: the client mistook the field, not the format.
pub fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let said = e.to_string();
        if said.starts_with("recursion limit exceeded") {
            return invalid_json(
                "the request body nests arrays and objects more than 128 levels deep".to_owned(),
            );
        }
        // Parsed again, on this error path only: serde_json calls some wrong types a syntax
        // error (`null` for a field that takes one of several names), though the body is
        // valid JSON; a lone surrogate (`"\ud800"`) or invalid UTF-8 is not. And a body that
        // is not JSON is said so first, before a field found missing on the way (`{} x`).
        let parsed = serde_json::from_slice::<serde_json::Value>(bytes);
        if parsed.is_err()
            && let Some(encoding) = not_utf8(bytes)
        {
            return invalid_json(encoding);
        }
        if let Err(syntax) = &parsed {
            let why = if e.classify() == serde_json::error::Category::Data {
                syntax
            } else {
                &e
            };
            return invalid_json(format!(
                "the request body is not valid JSON: {}",
                herald_core::js_json::syntax_error_said(why, "")
            ));
        }
        let path = path_of::<T>(bytes);
        if let Some(field) = missing_field(&said) {
            let field = match &path {
                Some(p) => format!("{p}.{field}"),
                None => field.to_owned(),
            };
            return crate::service::ServiceError::from(herald_core::Invalid::new(
                field,
                "is required",
            ))
            .into();
        }
        // A null under a name the operation does not know is an unknown field (a misspelling,
        // as `400` says), not a value refused.
        if let (Ok(value), Some(p)) = (&parsed, &path)
            && !said.starts_with("unknown field")
            && value_at(value, p).is_some_and(serde_json::Value::is_null)
        {
            return crate::service::ServiceError::from(herald_core::Invalid::new(
                p.to_string(),
                "must not be null: give a value, or leave the field out where it may be",
            ))
            .into();
        }
        let field = path
            .as_ref()
            .map(|p| format!("`{p}`: "))
            .unwrap_or_default();
        let mut refused = invalid_json(format!(
            "the request body is JSON, but not of this operation's shape: {field}{}",
            in_json_terms(&without_type_names(&said))
        ));
        // Named for a client to branch on too, as a value refused with `422` is.
        refused.field = path.map(|p| p.to_string());
        refused
    })
}

/// What is wrong with a body that is not UTF-8, which JSON between systems is (RFC 8259):
/// UTF-16 (a byte-order mark, or the zero bytes of ASCII in it), or a byte of another
/// single-byte encoding (Latin-1's `é` is `0xE9`), named where it is.
pub(super) fn not_utf8(bytes: &[u8]) -> Option<String> {
    // UTF-16 text of ASCII characters is valid UTF-8 with a zero byte in every pair, which
    // JSON never holds raw: told before the UTF-8 check, which would pass it.
    let utf16 = bytes.starts_with(&[0xFF, 0xFE])
        || bytes.starts_with(&[0xFE, 0xFF])
        || bytes.iter().take(64).any(|&b| b == 0);
    if utf16 {
        return Some(
            "the request body is not UTF-8 but UTF-16 (or holds zero bytes): send JSON encoded \
             as UTF-8"
                .to_owned(),
        );
    }
    let e = std::str::from_utf8(bytes).err()?;
    let at = e.valid_up_to();
    let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
    let column = at
        - bytes[..at]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |n| n + 1)
        + 1;
    Some(format!(
        "the request body is not UTF-8: byte 0x{:02X} at line {line} column {column} is not \
         UTF-8 (Latin-1 or Windows-1252 text, perhaps); send JSON encoded as UTF-8",
        bytes[at]
    ))
}

pub(super) fn invalid_json(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", message)
}

/// The field serde says is missing (`missing field `name``), if that is what it says.
fn missing_field(said: &str) -> Option<&str> {
    let rest = said.strip_prefix("missing field `")?;
    Some(&rest[..rest.find('`')?])
}

/// Where in the body `T` could not take the value: `None` when it is the body itself.
fn path_of<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Option<serde_path_to_error::Path> {
    let mut parser = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut parser) {
        Err(e) if e.path().iter().next().is_some() => Some(e.path().clone()),
        _ => None,
    }
}

/// The value at `path` in `value`, if there is one.
fn value_at<'v>(
    value: &'v serde_json::Value,
    path: &serde_path_to_error::Path,
) -> Option<&'v serde_json::Value> {
    use serde_path_to_error::Segment;
    path.iter().try_fold(value, |at, segment| match segment {
        Segment::Map { key } => at.get(key.as_str()),
        Segment::Seq { index } => at.get(*index),
        Segment::Enum { .. } | Segment::Unknown => None,
    })
}

/// serde names the Rust type it expected (`expected struct RotateBody`); the client knows it
/// as a JSON object.
fn without_type_names(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("struct ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "struct ".len()..];
        let name_len = after
            .find(|c: char| !c.is_alphanumeric() && c != '_')
            .unwrap_or(after.len());
        out.push_str("a JSON object");
        rest = &after[name_len..];
    }
    out.push_str(rest);
    out
}

/// serde's words for what it expected, in JSON's: a client sends numbers, arrays and
/// objects, not `u64`s, sequences and maps, and picks a value, not a Rust enum's variant.
fn in_json_terms(message: &str) -> String {
    const WORDS: [(&str, &str); 12] = [
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected u16", "expected a whole number, 0 or more"),
        ("expected u8", "expected a whole number, 0 or more"),
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected i64", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a JSON object"),
        ("unknown variant", "unknown value"),
        (
            "expected variant identifier",
            "expected one of the values it takes",
        ),
    ];
    WORDS
        .iter()
        .fold(message.to_owned(), |text, (serde, json)| {
            text.replace(serde, json)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_not_in_utf8_is_named_as_such() {
        let message = |body: &[u8]| parse_json::<serde_json::Value>(body).err().unwrap().message;
        let latin1 = b"{\"user\":\n  {\"id\": \"caf\xe9\"}}";
        assert_eq!(
            message(latin1),
            "the request body is not UTF-8: byte 0xE9 at line 2 column 14 is not UTF-8 (Latin-1 \
             or Windows-1252 text, perhaps); send JSON encoded as UTF-8"
        );
        let utf16: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain("{\"a\": 1}".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert!(message(&utf16).contains("not UTF-8 but UTF-16"));
        // Without a byte-order mark, ASCII in UTF-16 is valid UTF-8: its zero bytes tell it.
        let bare: Vec<u8> = "{\"a\": 1}"
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        assert!(message(&bare).contains("not UTF-8 but UTF-16"));
        // Valid UTF-8 that is not JSON is told as before.
        assert!(message(b"{\"a\": caf\xc3\xa9}").starts_with("the request body is not valid JSON"));
    }

    #[test]
    fn a_body_of_the_wrong_shape_is_told_in_json_terms() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Body {
            timeout_ms: Option<u64>,
            events: Option<Vec<String>>,
            role: Option<Role>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Role {
            Manager,
            Producer,
        }
        let said = |body: &str| parse_json::<Body>(body.as_bytes()).unwrap_err().message;
        let timeout = said(r#"{"timeout_ms": "5000"}"#);
        assert!(
            timeout.contains("`timeout_ms`")
                && timeout.contains("expected a whole number, 0 or more"),
            "{timeout}"
        );
        let events = said(r#"{"events": "user.created"}"#);
        assert!(events.contains("expected an array"), "{events}");
        let role = said(r#"{"role": "admin"}"#);
        assert!(
            role.contains("unknown value `admin`, expected `manager` or `producer`"),
            "{role}"
        );
        for text in [timeout, events, role] {
            assert!(
                !text.contains("u64") && !text.contains("sequence") && !text.contains("variant"),
                "{text}"
            );
        }
    }

    #[test]
    fn shape_errors_name_json_not_rust_types() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct RotateBody {
            secret: Option<String>,
        }
        let shape = parse_json::<RotateBody>(b"\"text\"").unwrap_err().message;
        assert!(shape.contains("not of this operation's shape"), "{shape}");
        assert!(shape.contains("expected a JSON object"), "{shape}");
        assert!(!shape.contains("RotateBody"), "{shape}");
        let syntax = parse_json::<RotateBody>(b"{\"secret\": ")
            .unwrap_err()
            .message;
        assert!(syntax.contains("not valid JSON"), "{syntax}");
    }

    /// A required field left out or given as null is the field's fault (422, named, nested
    /// too); text that is not JSON (a lone surrogate) is the format's (400).

    #[test]
    fn a_required_field_missing_or_null_is_named() {
        #[derive(Debug, Default, serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Role {
            #[default]
            Manager,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            name: String,
            #[serde(default)]
            role: Role,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Outer {
            key: Inner,
        }
        let refused = |body: &str| parse_json::<Outer>(body.as_bytes()).unwrap_err();
        for (body, field, said) in [
            (r#"{}"#, "key", "is required"),
            (r#"{"key": {}}"#, "key.name", "is required"),
            (r#"{"key": {"name": null}}"#, "key.name", "must not be null"),
            (
                r#"{"key": {"name": "k", "role": null}}"#,
                "key.role",
                "must not be null",
            ),
        ] {
            let e = refused(body);
            assert_eq!(
                (e.status, e.code, e.field.as_deref()),
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_field",
                    Some(field)
                ),
                "{body}: {}",
                e.message
            );
            assert!(e.message.contains(said), "{body}: {}", e.message);
        }
        // A misspelt field sent as null is an unknown field, not a null refused.
        let e = refused(r#"{"key": {"name": "k", "rol": null}}"#);
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "invalid_json")
        );
        assert!(e.message.contains("unknown field `rol`"), "{}", e.message);
        let e = refused(r#"{"key": {"name": "\ud800"}}"#);
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "invalid_json")
        );
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        // Not JSON, though a field is found missing before the parser reaches what is wrong:
        // said to be not JSON, as where nothing is missing.
        for body in [r#"{} x"#, r#"{}{}"#, r#"{"key": {}} x"#] {
            let e = refused(body);
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "invalid_json"),
                "{body}: {}",
                e.message
            );
            assert!(
                e.message
                    .starts_with("the request body is not valid JSON: trailing characters"),
                "{body}: {}",
                e.message
            );
        }
    }

    #[test]
    fn valid_json_of_the_wrong_shape_is_not_called_invalid_json() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Role {
            Manager,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct KeyBody {
            name: String,
            role: Option<Role>,
        }
        // serde_json reports these as syntax errors, though the JSON is valid.
        for body in [
            r#"{"name": "k", "role": 7}"#,
            r#"{"name": "k", "role": [1]}"#,
        ] {
            let message = parse_json::<KeyBody>(body.as_bytes()).unwrap_err().message;
            assert!(
                message.contains("not of this operation's shape"),
                "{body}: {message}"
            );
            assert!(message.contains("`role`: "), "{body}: {message}");
        }
        let message = parse_json::<KeyBody>(br#"{"name": 1}"#)
            .unwrap_err()
            .message;
        assert!(
            message.contains("`name`: invalid type: integer"),
            "{message}"
        );
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let message = parse_json::<Vec<serde_json::Value>>(deep.as_bytes())
            .unwrap_err()
            .message;
        assert!(message.contains("more than 128 levels deep"), "{message}");
        assert!(!message.contains("not valid JSON"), "{message}");
    }
}
