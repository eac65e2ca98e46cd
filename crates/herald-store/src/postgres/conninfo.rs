//! Reading libpq's connection strings where tokio-postgres does not: the URL's parameters
//! (percent-decoded) and the `key=value` form, for the TLS settings and for showing a string
//! without its password.

use percent_encoding::percent_decode_str;

/// A URL's part before its query and the query, split where tokio-postgres splits it: the
/// credentials end at the first `@`, so a `?` before it belongs to the password.
pub fn split_query(url: &str) -> (&str, Option<&str>) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let after_credentials = url[after_scheme..]
        .find('@')
        .map_or(after_scheme, |i| after_scheme + i + 1);
    match url[after_credentials..].find('?') {
        Some(i) => {
            let at = after_credentials + i;
            (&url[..at], Some(&url[at + 1..]))
        }
        None => (url, None),
    }
}

/// A `key=value` value as libpq and tokio-postgres read it back.
pub(crate) fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Whether `url` is in the URL form (rather than libpq's `key=value` form).
pub(crate) fn is_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

pub(crate) fn decode(raw: &str) -> Result<String, String> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "the database URL has a parameter that is not UTF-8 once decoded".into())
}

/// libpq's `key=value key2='quoted value'` form as pairs, or `None` if it is not well formed.
pub(crate) fn key_value_pairs(s: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            return it.peek().is_none().then_some(pairs);
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        it.next_if_eq(&'=')?;
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let quoted = it.next_if_eq(&'\'').is_some();
        let mut value = String::new();
        loop {
            match it.peek() {
                None if quoted => return None,
                None => break,
                Some('\'') if quoted => {
                    it.next();
                    break;
                }
                Some(c) if !quoted && c.is_whitespace() => break,
                Some(_) => {}
            }
            let c = it.next()?;
            value.push(if c == '\\' { it.next()? } else { c });
        }
        if value.is_empty() && !quoted {
            return None;
        }
        pairs.push((key, value));
    }
}

/// A `key=value` connection string as it may be shown: its password replaced by `…`. `None`
/// when it cannot be read.
pub fn without_password(s: &str) -> Option<String> {
    let pairs = key_value_pairs(s)?;
    let shown: Vec<String> = pairs
        .into_iter()
        .map(|(key, value)| {
            if key.to_ascii_lowercase().contains("password") {
                format!("{key}=…")
            } else if value.is_empty() || value.contains([' ', '\'', '\\']) {
                format!("{key}={}", quoted(&value))
            } else {
                format!("{key}={value}")
            }
        })
        .collect();
    Some(shown.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_value_string_is_shown_without_its_password() {
        assert_eq!(
            without_password("host=db  password='s3 cret' dbname='my db' PassWord=x user=h")
                .as_deref(),
            Some("host=db password=… dbname='my db' PassWord=… user=h")
        );
        assert_eq!(without_password("host=db password='unterminated"), None);
    }

    #[test]
    fn the_query_starts_after_the_credentials() {
        assert_eq!(
            split_query("postgres://u:p?x@db/h?sslmode=require"),
            ("postgres://u:p?x@db/h", Some("sslmode=require"))
        );
        assert_eq!(
            split_query("postgres://db/h?a=b"),
            ("postgres://db/h", Some("a=b"))
        );
        assert_eq!(
            split_query("postgres://u@db/h"),
            ("postgres://u@db/h", None)
        );
    }
}
