//! Compact JSON exactly as JavaScript's `JSON.stringify(JSON.parse(text))` writes it.
//!
//! Some receivers verify a signature over the re-serialised body rather than the raw bytes
//! (Opal's reference verifier does `JSON.stringify(request.body)`), so every body Herald signs
//! must survive that round trip unchanged. Three things differ from a plain serialiser:
//! numbers (`1.0` is `1`, `1e21` is `1e+21`, integers past 2^53 lose precision), key order
//! (keys that are array indices come first, ascending), and nothing else: string escaping is
//! already the same.

use std::fmt::Write;

use serde_json::{Map, Value};

/// Writes `value` as JavaScript would.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64().filter(|i| i.unsigned_abs() <= MAX_SAFE) {
                let _ = write!(out, "{i}");
            } else if let Some(u) = n.as_u64().filter(|u| *u <= MAX_SAFE) {
                let _ = write!(out, "{u}");
            } else {
                out.push_str(&number(n.as_f64().unwrap_or(f64::NAN)));
            }
        }
        Value::String(s) => push_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

const MAX_SAFE: u64 = 9_007_199_254_740_991;

/// Appends `s` as a JSON string. Most strings need no escaping (no quote, backslash or control
/// character), and those are copied as they are; the rest go through serde_json, whose escapes
/// are JavaScript's. Bodies are written for every attempt, and a temporary string per key or
/// value was a good part of their cost.
fn push_string(out: &mut String, s: &str) {
    if s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(&serde_json::to_string(s).expect("strings serialise"));
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

fn write_object(out: &mut String, map: &Map<String, Value>) {
    let mut index_keys: Vec<(u32, &String)> = map
        .keys()
        .filter_map(|k| array_index(k).map(|i| (i, k)))
        .collect();
    index_keys.sort_unstable();
    let ordered = index_keys
        .iter()
        .map(|(_, k)| *k)
        .chain(map.keys().filter(|k| array_index(k).is_none()));
    out.push('{');
    for (i, key) in ordered.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(key).expect("strings serialise"));
        out.push(':');
        write_value(out, &map[key.as_str()]);
    }
    out.push('}');
}

/// Whether `text`, valid JSON, is already exactly what [`to_string`] writes for it, nested at
/// most `max_depth` deep, so that it can be stored as it is, without building a tree and writing
/// it again. Conservative: `false` for anything that might be written differently (whitespace,
/// fractions or exponents, integers past 2^53 - 1, `-0`, `\u` and `\/` escapes, keys
/// that are array indices or repeated), which then takes the full path through [`to_string`].
pub fn is_written_as_javascript_writes_it(text: &str, max_depth: usize) -> bool {
    let bytes = text.as_bytes();
    // What is open around the current position: for an object, the keys seen so far (to find
    // repeated keys); for an array, nothing.
    let mut open: Vec<Option<Vec<&[u8]>>> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => {
                if open.len() >= max_depth {
                    return false;
                }
                open.push((bytes[i] == b'{').then(Vec::new));
                i += 1;
            }
            b'}' | b']' => {
                let closes_object = bytes[i] == b'}';
                match open.pop() {
                    Some(keys) if keys.is_some() == closes_object => i += 1,
                    _ => return false,
                }
            }
            b',' | b':' => i += 1,
            b'"' => {
                let Some(end) = plain_string_end(bytes, i + 1) else {
                    return false;
                };
                let content = &bytes[i + 1..end];
                i = end + 1;
                // A string followed by ':' is a key of the innermost open object.
                if bytes.get(i) == Some(&b':') {
                    let Some(Some(keys)) = open.last_mut() else {
                        return false;
                    };
                    let key = std::str::from_utf8(content).unwrap_or_default();
                    // A long object is rare; comparing its keys pairwise is not worth it.
                    if keys.len() >= 64 || array_index(key).is_some() || keys.contains(&content) {
                        return false;
                    }
                    keys.push(content);
                }
            }
            b'-' | b'0'..=b'9' => {
                let negative = bytes[i] == b'-';
                if negative {
                    i += 1;
                }
                let digits = i;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                let n = &bytes[digits..i];
                // Only safe integers as written: no fraction, exponent, leading zero or -0.
                if n.is_empty()
                    || !is_safe_integer(n)
                    || (n[0] == b'0' && (n.len() > 1 || negative))
                    || matches!(bytes.get(i), Some(b'.' | b'e' | b'E'))
                {
                    return false;
                }
            }
            b't' if bytes[i..].starts_with(b"true") => i += 4,
            b'f' if bytes[i..].starts_with(b"false") => i += 5,
            b'n' if bytes[i..].starts_with(b"null") => i += 4,
            // Whitespace, or anything else: not the compact form.
            _ => return false,
        }
    }
    !bytes.is_empty() && open.is_empty()
}

/// Whether the digits `n` are an integer JavaScript holds exactly (at most 2^53 - 1).
fn is_safe_integer(n: &[u8]) -> bool {
    n.len() < 16
        || (n.len() == 16
            && std::str::from_utf8(n)
                .ok()
                .and_then(|d| d.parse::<u64>().ok())
                .is_some_and(|v| v <= MAX_SAFE))
}

/// Where the string whose content starts at `from` ends (its closing quote), if its escapes are
/// only the short ones serde_json writes (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`) and it has no
/// raw control character.
fn plain_string_end(bytes: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return Some(i),
            b'\\' => match bytes.get(i + 1) {
                Some(b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                _ => return None,
            },
            0..=0x1f => return None,
            _ => i += 1,
        }
    }
    None
}

/// Whether a key is a canonical array index (`"0"`, `"17"`, not `"01"`), which JavaScript
/// objects order before every other key.
fn array_index(key: &str) -> Option<u32> {
    if key.is_empty() || key.len() > 10 || (key.len() > 1 && key.starts_with('0')) {
        return None;
    }
    if !key.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    key.parse::<u64>()
        .ok()
        .filter(|i| *i < u64::from(u32::MAX))
        .map(|i| i as u32)
}

/// Writes a JSON object field by field, in order, the way [`to_string`] would, with fragments
/// that are already JavaScript-exact (stored event data) spliced in as they are. Keys must not be
/// array indices (those would move to the front), which holds for every envelope Herald writes.
#[derive(Debug)]
pub struct ObjectWriter {
    out: String,
    empty: bool,
}

impl Default for ObjectWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl ObjectWriter {
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// A writer whose buffer holds `bytes` without growing (a body's size is mostly its data's).
    pub fn with_capacity(bytes: usize) -> Self {
        let mut out = String::with_capacity(bytes.max(1));
        out.push('{');
        Self { out, empty: true }
    }

    fn key(&mut self, key: &str) {
        debug_assert!(
            array_index(key).is_none(),
            "index-like keys are ordered first by JavaScript"
        );
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        push_string(&mut self.out, key);
        self.out.push(':');
    }

    pub fn string(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        push_string(&mut self.out, value);
        self
    }

    pub fn value(mut self, key: &str, value: &Value) -> Self {
        self.key(key);
        write_value(&mut self.out, value);
        self
    }

    /// A fragment that is already JavaScript-exact JSON.
    pub fn raw(mut self, key: &str, json: &str) -> Self {
        self.key(key);
        self.out.push_str(json);
        self
    }

    pub fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

/// ECMAScript `Number::toString` for a finite double.
pub fn number(x: f64) -> String {
    if !x.is_finite() {
        return "null".to_owned();
    }
    if x == 0.0 {
        return "0".to_owned();
    }
    let sign = if x < 0.0 { "-" } else { "" };
    let (digits, n) = shortest_digits(x.abs());
    let k = digits.len() as i32;
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let e_sign = if e < 0 { '-' } else { '+' };
        if k == 1 {
            format!("{digits}e{e_sign}{}", e.abs())
        } else {
            format!("{}.{}e{e_sign}{}", &digits[..1], &digits[1..], e.abs())
        }
    };
    format!("{sign}{body}")
}

/// Why text does not read as JSON, after the thing it is about ("data: …"): not valid JSON, or
/// valid but holding a number no double holds, which JavaScript would read as `Infinity`.
/// `of` names the text where it is a part of what was sent, read on its own ("the data"): its
/// lines and columns count from the part's start; empty for the whole.
pub fn unreadable(e: &serde_json::Error, of: &str) -> String {
    if e.to_string().starts_with("number out of range") {
        return format!(
            "holds a number {} past the largest a double holds (about 1.8e308; JavaScript \
             reads it as Infinity): send such a value as a string",
            place(e, of)
        );
    }
    format!("is not valid JSON: {}", syntax_error_said(e, of))
}

/// What is wrong with JSON text that did not parse, in words a producer can act on (`of` as
/// for [`unreadable`]). serde_json calls an escape that names half of a UTF-16 surrogate pair
/// ("\\ud800", as JavaScript's `JSON.stringify` writes a string cut inside an emoji)
/// "unexpected end of hex escape" or a "lone leading surrogate", even when the half is the
/// trailing one.
pub fn syntax_error_said(e: &serde_json::Error, of: &str) -> String {
    let said = e.to_string();
    if said.starts_with("unexpected end of hex escape")
        || said.starts_with("lone leading surrogate in hex escape")
    {
        return format!(
            "a \\u escape {} names half of a UTF-16 surrogate pair (\\ud800 to \\udfff) \
             without the other half; JSON text must be valid Unicode, so mend the string where \
             it was cut (often inside an emoji)",
            place(e, of)
        );
    }
    if of.is_empty() {
        return said;
    }
    let at = format!("at line {} column {}", e.line(), e.column());
    said.replacen(&at, &place(e, of), 1)
}

/// Where in the text `e` is: "at line 2 column 19", and "of the data" where the text was a
/// part of what was sent (a producer counting from the request's start would look elsewhere).
fn place(e: &serde_json::Error, of: &str) -> String {
    if of.is_empty() {
        format!("at line {} column {}", e.line(), e.column())
    } else {
        format!("at line {} column {} of {of}", e.line(), e.column())
    }
}

/// The shortest digits that read back as `x` (positive, finite, not zero), and where the
/// decimal point goes: `x` is `0.digits × 10^n`. Where two shortest strings are equally close
/// to `x`, JavaScript takes the even one; so does Ryū, while Rust's own `{:e}` takes the
/// larger (`1125899906842624.25` is `…624.2` in JavaScript, `…624.3` in Rust), which would
/// break a receiver that checks the signature over `JSON.stringify(JSON.parse(body))`.
fn shortest_digits(x: f64) -> (String, i32) {
    let mut buffer = ryu::Buffer::new();
    // Ryū writes `1.5e-7`, `1e21`, `123.456` or `0.001`: read the digits and the point back.
    let written = buffer.format_finite(x);
    let (mantissa, exp) = written.split_once('e').unwrap_or((written, "0"));
    let (int, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all = format!("{int}{fraction}");
    let significant = all.trim_start_matches('0');
    let leading_zeros = (all.len() - significant.len()) as i32;
    let n = int.len() as i32 - leading_zeros + exp.parse::<i32>().expect("an integer exponent");
    (significant.trim_end_matches('0').to_owned(), n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_are_written_as_serde_json_escapes_them() {
        for text in [
            "",
            "plain",
            "quote \"",
            "back\\slash",
            "new\nline",
            "\u{1f}",
            "\u{7f}",
            "\u{2028}",
            "Zoë 😀",
            "\t\r\u{8}\u{c}",
        ] {
            let mut out = String::new();
            push_string(&mut out, text);
            assert_eq!(out, serde_json::to_string(text).unwrap(), "{text:?}");
        }
        let body = ObjectWriter::with_capacity(4)
            .string("a\"b", "c\nd")
            .raw("n", "1")
            .finish();
        assert_eq!(body, r#"{"a\"b":"c\nd","n":1}"#);
    }

    #[test]
    fn half_a_surrogate_pair_is_named_as_such() {
        for text in [
            r#"{"s":"\ud800"}"#,
            r#"{"s":"x\udc00y"}"#,
            r#"{"s":"\ud83d\u0041"}"#,
        ] {
            let e = serde_json::from_str::<Value>(text).unwrap_err();
            let said = syntax_error_said(&e, "");
            assert!(
                said.starts_with("a \\u escape at line 1 column ")
                    && said.contains("half of a UTF-16 surrogate pair"),
                "{text}: {said}"
            );
            // Read on its own, a part says that its place counts from the part's start.
            let said = syntax_error_said(&e, "the data");
            assert!(said.contains(" of the data names half"), "{text}: {said}");
        }
        let e = serde_json::from_str::<Value>(r#"{"s":"\q"}"#).unwrap_err();
        assert_eq!(
            syntax_error_said(&e, ""),
            e.to_string(),
            "other errors are serde_json's"
        );
        assert_eq!(
            syntax_error_said(&e, "the data"),
            "invalid escape at line 1 column 8 of the data"
        );
    }

    #[test]
    fn a_number_no_double_holds_is_named_as_such() {
        let e = serde_json::from_str::<Value>(r#"{"x": 1e400}"#).unwrap_err();
        let said = unreadable(&e, "");
        assert!(
            said.starts_with("holds a number at line 1 column ") && said.contains("as a string"),
            "{said}"
        );
        let said = unreadable(&e, "the data");
        assert!(
            said.starts_with("holds a number at line 1 column ")
                && said.contains(" of the data past the largest"),
            "{said}"
        );
        let e = serde_json::from_str::<Value>(r#"{"x": }"#).unwrap_err();
        assert!(unreadable(&e, "").starts_with("is not valid JSON: "));
    }

    /// A key repeated within one object is not the stored form (parsing keeps only the last);
    /// the same key in an object and in one nested in it, or in two sibling objects, is.
    #[test]
    fn only_keys_repeated_within_one_object_are_refused() {
        for (text, stored) in [
            (r#"{"a":1,"a":2}"#, false),
            (r#"{"a":{"b":1},"a":2}"#, false),
            (r#"{"a":{"b":1,"c":{"d":1},"b":2}}"#, false),
            (r#"{"a":{"a":1}}"#, true),
            (r#"{"a":{"b":1},"b":2}"#, true),
            (r#"[{"a":1},{"a":2}]"#, true),
            (r#"{"x":[{"a":1}],"a":{"x":1}}"#, true),
        ] {
            assert_eq!(
                is_written_as_javascript_writes_it(text, 32),
                stored,
                "{text}"
            );
        }
    }

    /// Text that is not JSON is never taken for the stored form, and does not panic.
    #[test]
    fn text_that_is_not_json_is_not_the_stored_form() {
        for text in ["]", "}", "{]", "[}", "{\"a\":1}}", "", "tru", "{\"a\""] {
            assert!(!is_written_as_javascript_writes_it(text, 32), "{text}");
        }
        assert!(is_written_as_javascript_writes_it(
            r#"{"a":[1,{"b":null}]}"#,
            32
        ));
        assert!(!is_written_as_javascript_writes_it(
            r#"{"a":[1,{"b":null}]}"#,
            2
        ));
    }

    #[test]
    fn numbers_are_written_as_javascript_writes_them() {
        for (x, js) in [
            (1.0, "1"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (1e21, "1e+21"),
            (1.5e21, "1.5e+21"),
            (1e20, "100000000000000000000"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (0.000001, "0.000001"),
            (123.456, "123.456"),
            (-0.0, "0"),
            (100.0, "100"),
            (0.001, "0.001"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
        ] {
            assert_eq!(number(x), js, "{x}");
        }
        // Each of these doubles lies exactly halfway between two shortest forms that read
        // back as it: JavaScript writes the even one (Node's `String(x)`).
        for (exact, js) in [
            ("1125899906842624.25", "1125899906842624.2"),
            ("115956229735893.125", "115956229735893.12"),
            ("-139747609375515.625", "-139747609375515.62"),
            ("22506816227134.3125", "22506816227134.312"),
        ] {
            let x: f64 = exact.parse().unwrap();
            assert_eq!(number(x), js, "{exact}");
        }
    }

    #[test]
    fn integers_past_two_to_the_53_lose_precision_like_javascript() {
        let v: Value =
            serde_json::from_str("[12345678901234567890, 9007199254740991, -9007199254740993]")
                .unwrap();
        assert_eq!(
            to_string(&v),
            "[12345678901234567000,9007199254740991,-9007199254740992]"
        );
    }

    #[test]
    fn index_like_keys_come_first_in_ascending_order() {
        let v: Value = serde_json::from_str(r#"{"b":1,"10":2,"a":3,"2":4,"01":5}"#).unwrap();
        assert_eq!(to_string(&v), r#"{"2":4,"10":2,"b":1,"a":3,"01":5}"#);
    }

    #[test]
    fn a_written_object_with_a_spliced_fragment_equals_the_whole_written_at_once() {
        let data = json!({ "n": 1.5, "2": "x", "nested": { "a": [1, 2.0] } });
        let spliced = ObjectWriter::new()
            .value("type", &json!("user.created"))
            .raw("data", &to_string(&data))
            .value("n", &json!(3.0))
            .finish();
        let whole = to_string(&json!({ "type": "user.created", "data": data, "n": 3.0 }));
        assert_eq!(spliced, whole);
    }

    #[test]
    fn strings_are_escaped_like_javascript() {
        let v = json!({ "s": "a\"b\\c\n\u{1}é/\u{7f}" });
        assert_eq!(to_string(&v), "{\"s\":\"a\\\"b\\\\c\\n\\u0001é/\u{7f}\"}");
    }
}
