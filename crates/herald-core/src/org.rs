//! Organizations (tenants) and their organization-scoped API keys.

use serde::Serialize;

use crate::catalog::CatalogName;
use crate::{ApiKeyId, Invalid, OrgId, Timestamp};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Organization {
    pub id: OrgId,
    pub name: String,
    pub handle: OrgHandle,
    pub catalogs: Vec<CatalogName>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A name that does not have the form of an id of what it names (`kind`, "a webhook"): the CLI
/// takes a webhook or an API key by its id or its name, and would take such a name for an id.
pub fn refuse_id_form(name: String, looks_like_id: bool, kind: &str) -> Result<String, Invalid> {
    if looks_like_id {
        return Err(Invalid::new(
            "name",
            format!(
                "has the form of {kind} id, and the CLI takes names and ids alike; choose \
                 another name"
            ),
        ));
    }
    Ok(name)
}

/// A display name: 1 to 200 characters after trimming, at least one of them visible, no control
/// characters, and none that reorders the text around it (a name shown in the dashboard could
/// otherwise pass for another).
pub fn parse_name(raw: &str, field: &str) -> Result<String, Invalid> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(Invalid::new(field, "must not be empty"));
    }
    if !name.chars().any(|c| !c.is_whitespace() && !is_invisible(c)) {
        return Err(Invalid::new(
            field,
            "must contain a visible character, not only blank or zero-width ones",
        ));
    }
    if name.chars().any(is_bidi_control) {
        return Err(Invalid::new(
            field,
            "must not contain bidirectional embedding, override or isolate characters (U+202A to U+202E, U+2066 to U+2069)",
        ));
    }
    if name.chars().count() > 200 {
        return Err(Invalid::new(field, "must be at most 200 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(Invalid::new(field, "must not contain control characters"));
    }
    Ok(name.to_owned())
}

/// Characters that show nothing by themselves: Unicode's default-ignorable ones (zero-width
/// spaces and joiners, direction marks, the soft hyphen, variation selectors, tags, the
/// byte-order mark...) and the fillers that render blank (Hangul, Braille). A name of these
/// alone looks empty.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2060}'..='\u{206F}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

pub(crate) fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// A short, domain-like name used in WebSub topics and issuer URLs: lower-case letters, digits,
/// `-` and `.`, 1 to 63 characters, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, example = "acme")]
pub struct OrgHandle(String);

impl OrgHandle {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        // As a domain name's labels: it goes into WebSub topics (`acme.org_….event.user`).
        let label = |l: &str| {
            l.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && l.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
        };
        let ok = raw.len() <= 63
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && raw.split('.').all(label);
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(Invalid::new(
                "handle",
                "must be 1 to 63 lower-case letters, digits, '-' or '.', starting and ending with a letter or digit, with a letter or digit on each side of every '.' (e.g. acme-corp)",
            ))
        }
    }

    /// A handle derived from a display name: `Acme Inc.` becomes `acme-inc`.
    pub fn from_name(name: &str) -> Self {
        use unicode_normalization::UnicodeNormalization;
        use unicode_normalization::char::is_combining_mark;
        let mut slug = String::new();
        // Decomposed, `é` is `e` and a mark, which is dropped: `Café` → `cafe`.
        for c in name.nfkd().flat_map(char::to_lowercase) {
            if c.is_ascii_alphanumeric() {
                slug.push(c);
            } else if c == 'ß' {
                slug.push_str("ss");
            } else if is_combining_mark(c) {
                continue;
            } else if !slug.is_empty() && !slug.ends_with('-') {
                slug.push('-');
            }
        }
        let slug: String = slug.trim_end_matches('-').chars().take(63).collect();
        let slug = slug.trim_end_matches('-').to_owned();
        if slug.is_empty() {
            Self("org".to_owned())
        } else {
            Self(slug)
        }
    }

    /// This handle with `-n` after it (shortened to stay within 63 characters): the next one to
    /// try when a handle derived from a name is taken.
    pub fn numbered(&self, n: u32) -> Self {
        let suffix = format!("-{n}");
        let base: String = self.0.chars().take(63 - suffix.len()).collect();
        Self(format!("{}{suffix}", base.trim_end_matches(['-', '.'])))
    }

    pub fn from_trusted(raw: String) -> Self {
        Self(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What an API key may do within its organization.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    /// Everything of its organization: webhooks, keys, event types, history, events.
    #[default]
    Manager,
    /// Posts events and reads the event types: what a producer needs, and nothing that could
    /// redirect or read the organization's deliveries if the key leaked.
    Producer,
}

impl KeyRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manager => "manager",
            Self::Producer => "producer",
        }
    }

    /// A role as a client names it; another name is refused with the two there are, as the
    /// other closed sets of names (profiles, catalogs) are.
    pub fn parse(raw: &str) -> Result<Self, crate::Invalid> {
        match raw {
            "manager" => Ok(Self::Manager),
            "producer" => Ok(Self::Producer),
            _ => Err(crate::Invalid::new(
                "role",
                format!(
                    "'{}' is not a role{}; choose manager (everything of the organization) or \
                     producer (posts events and reads event types)",
                    crate::truncate_for_message(raw),
                    crate::suggest::did_you_mean(crate::suggest::closest(
                        raw,
                        ["manager", "producer"]
                    ))
                ),
            )),
        }
    }

    /// The role stored as `raw`; an unknown one (from a newer version) grants the least.
    pub fn from_stored(raw: &str) -> Self {
        match raw {
            "manager" => Self::Manager,
            _ => Self::Producer,
        }
    }
}

/// An organization-scoped API key as stored: only a hash of the key is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub org_id: OrgId,
    pub name: String,
    /// The first characters of the key, so that a user can tell keys apart.
    pub prefix: String,
    #[serde(skip)]
    pub key_hash: String,
    pub role: KeyRole,
    pub created_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_is_derived_from_the_name() {
        assert_eq!(OrgHandle::from_name("Acme Inc.").as_str(), "acme-inc");
        assert_eq!(OrgHandle::from_name("  ~~ ").as_str(), "org");
        assert_eq!(
            OrgHandle::from_name("Ünïcödé Çorp").as_str(),
            "unicode-corp"
        );
        assert_eq!(
            OrgHandle::from_name("Straße ﬁnance").as_str(),
            "strasse-finance"
        );
        assert_eq!(OrgHandle::from_name("日本").numbered(2).as_str(), "org-2");
        let long = OrgHandle::from_name(&"a".repeat(80)).numbered(12);
        assert_eq!(long.as_str().len(), 63);
        assert!(OrgHandle::parse(long.as_str()).is_ok());
    }

    #[test]
    fn a_handle_with_upper_case_or_spaces_is_rejected() {
        assert!(OrgHandle::parse("Acme").is_err());
        assert!(OrgHandle::parse("acme corp").is_err());
        assert!(OrgHandle::parse("-acme").is_err());
        assert!(OrgHandle::parse("acme.corp-1").is_ok());
        assert!(OrgHandle::parse("a--b.c9").is_ok());
        for bad in ["", "a.", "a-", "a..b", "a.-b", "a-.b", ".a"] {
            assert!(OrgHandle::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_empty_name_is_rejected() {
        assert!(parse_name("   ", "name").is_err());
        assert_eq!(parse_name(" Acme ", "name").unwrap(), "Acme");
        assert_eq!(
            parse_name("  ", "name").unwrap_err().message,
            "must not be empty"
        );
        for invisible in [
            "\u{200B}",
            "\u{FEFF}",
            " \u{200D}\u{2060} ",
            "\u{00AD}",
            "\u{200E}\u{200F}",
            "\u{FE0F}",
            "\u{E0041}",
            "\u{180E}",
            "\u{3164}",
            "\u{2800}",
            "\u{061C}",
            "\u{115F}\u{3164}",
            "\u{034F}\u{180E}\u{2060}",
        ] {
            let e = parse_name(invisible, "name").unwrap_err();
            assert!(e.message.contains("visible character"), "{invisible:?}");
        }
        // Joiners inside a visible name are text (emoji sequences, Persian).
        assert!(parse_name("Team \u{1F468}\u{200D}\u{1F469}", "name").is_ok());
        assert!(parse_name("\u{645}\u{200C}\u{6CC}", "name").is_ok());
    }

    #[test]
    fn a_name_cannot_reorder_the_text_around_it() {
        for spoof in ["Acme\u{202E}txt.exe", "\u{2066}Acme\u{2069}", "a\u{202A}b"] {
            let e = parse_name(spoof, "name").unwrap_err();
            assert!(
                e.message.contains("bidirectional"),
                "{spoof:?}: {}",
                e.message
            );
        }
        // Marks that only set a direction stay.
        assert!(parse_name("\u{5D0}\u{200F}Acme", "name").is_ok());
    }
}
