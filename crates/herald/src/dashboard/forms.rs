//! Posted HTML forms (`application/x-www-form-urlencoded`), where one name may repeat (a group
//! of checkboxes), which a plain struct deserializer does not handle.

/// Whether every name and value of a posted form is UTF-8 once its percent-escapes are
/// decoded (parsing it replaces the bytes that are not, which would pass for text typed so).
pub fn is_utf8(body: &[u8]) -> bool {
    body.split(|&b| b == b'&')
        .flat_map(|pair| pair.splitn(2, |&b| b == b'='))
        .all(|part| {
            let decoded: Vec<u8> = percent_encoding::percent_decode(part).collect();
            std::str::from_utf8(&decoded).is_ok()
        })
}

/// The fields of a posted form, in order.
#[derive(Debug, Default, Clone)]
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Self {
        Self(
            url::form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `name`, trimmed, or an empty string.
    pub fn text(&self, name: &str) -> String {
        self.get(name).unwrap_or_default().trim().to_owned()
    }

    /// The first value of `name` exactly as typed, or an empty string: for a secret, where a
    /// space at either end would be part of the HMAC key (the service refuses it, saying so).
    pub fn as_typed(&self, name: &str) -> String {
        self.get(name).unwrap_or_default().to_owned()
    }

    /// Every value of `name` (checked checkboxes), without empty ones.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every field, in order, as posted.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether a checkbox named `name` was checked.
    pub fn checked(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// The query string as a [`Form`]; never refuses a request (unknown or malformed parameters
/// are simply absent).
pub struct QueryForm(pub Form);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for QueryForm {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(QueryForm(Form::parse(
            parts.uri.query().unwrap_or_default().as_bytes(),
        )))
    }
}

/// A path id of the right shape, or "not found" (an id of the wrong shape cannot exist).
pub fn path_id<T>(
    raw: &str,
    parse: impl Fn(&str) -> Result<T, herald_core::Invalid>,
) -> Result<T, super::error::DashError> {
    parse(raw).map_err(|_| super::error::DashError::not_found())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_not_sent_as_utf8_is_told_apart() {
        assert!(is_utf8(b"name=Acme+%C3%A9&x=%E2%9C%93&empty=&flag"));
        assert!(is_utf8("name=caf\u{e9}".as_bytes()));
        assert!(!is_utf8(b"name=%ff%fe"));
        assert!(!is_utf8(b"na%ffme=x"));
        assert!(!is_utf8(b"name=\xff\xfe"));
        // A replacement character typed as such is text.
        assert!(is_utf8(b"name=%EF%BF%BD"));
    }

    #[test]
    fn repeated_names_are_all_kept() {
        let f = Form::parse(b"events=a&events=b&name=+x%20y+&active=on&events=");
        assert_eq!(f.all("events"), vec!["a", "b"]);
        assert_eq!(f.text("name"), "x y");
        assert!(f.checked("active"));
        assert!(!f.checked("missing"));
    }
}
