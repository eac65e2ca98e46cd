//! The built-in event catalogs: each identity product's event types, with channel, description,
//! example data and a JSON Schema. The catalogs are data files compiled into the binary.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use crate::Invalid;

/// One event type of a built-in catalog.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct CatalogEventType {
    pub name: String,
    pub channel: String,
    pub description: String,
    pub example: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
    /// The type's URI where the product names events by URI (Asgardeo's SET event URIs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

/// A built-in catalog.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct Catalog {
    #[serde(rename = "catalog")]
    pub name: String,
    pub description: String,
    pub types: Vec<CatalogEventType>,
    /// Compiled schemas by type name; built once at start-up.
    #[serde(skip)]
    validators: HashMap<String, jsonschema::Validator>,
}

impl Catalog {
    fn load(json: &str) -> Self {
        let mut catalog: Catalog = serde_json::from_str(json)
            .expect("built-in catalogs are valid JSON (checked by tests)");
        for t in &catalog.types {
            if let Some(schema) = &t.schema {
                let v = crate::event_type::compile_schema(schema)
                    .expect("built-in catalog schemas compile (checked by tests)");
                catalog.validators.insert(t.name.clone(), v);
            }
        }
        catalog
    }

    pub fn event_type(&self, name: &str) -> Option<&CatalogEventType> {
        self.types.iter().find(|t| t.name == name)
    }

    pub fn validator(&self, name: &str) -> Option<&jsonschema::Validator> {
        self.validators.get(name)
    }
}

static CATALOGS: LazyLock<Vec<Catalog>> = LazyLock::new(|| {
    [
        include_str!("optare.json"),
        include_str!("opal.json"),
        include_str!("parallelworks.json"),
        include_str!("permit.json"),
        include_str!("asgardeo.json"),
    ]
    .into_iter()
    .map(Catalog::load)
    .collect()
});

/// Every built-in catalog.
pub fn all() -> &'static [Catalog] {
    &CATALOGS
}

/// The name of a built-in catalog an organization enabled.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, example = "optare")]
pub struct CatalogName(String);

impl CatalogName {
    pub const DEFAULT: &'static str = "optare";

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        if all().iter().any(|c| c.name == raw) {
            Ok(Self(raw.to_owned()))
        } else {
            let known: Vec<&str> = all().iter().map(|c| c.name.as_str()).collect();
            Err(Invalid::new(
                "catalogs",
                format!(
                    "'{}' is not a built-in catalog{}; choose from: {}",
                    crate::truncate_for_message(raw),
                    crate::suggest::did_you_mean(crate::suggest::closest(
                        raw,
                        known.iter().copied()
                    )),
                    known.join(", ")
                ),
            ))
        }
    }

    pub fn default_set() -> Vec<Self> {
        vec![Self(Self::DEFAULT.to_owned())]
    }

    pub fn from_trusted(raw: String) -> Self {
        Self(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn catalog(&self) -> Option<&'static Catalog> {
        all().iter().find(|c| c.name == self.0)
    }
}

/// Parses a list of catalog names: known names, no duplicates, and no two catalogs that define the
/// same event type name (which would make an event's meaning ambiguous).
pub fn parse_catalog_set(raw: &[String]) -> Result<Vec<CatalogName>, CatalogSetError> {
    let mut names: Vec<CatalogName> = Vec::new();
    for r in raw {
        let name = CatalogName::parse(r).map_err(CatalogSetError::Invalid)?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for name in &names {
        let catalog = name.catalog().expect("parsed names are built-in");
        for t in &catalog.types {
            if let Some(other) = seen.insert(&t.name, &catalog.name) {
                return Err(CatalogSetError::Conflict(format!(
                    "catalogs '{other}' and '{}' both define the event type '{}'; enable only one of them",
                    catalog.name, t.name
                )));
            }
        }
    }
    Ok(names)
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogSetError {
    #[error(transparent)]
    Invalid(Invalid),
    #[error("{0}")]
    Conflict(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_catalog_gets_the_one_it_most_likely_meant() {
        let refused = |raw| CatalogName::parse(raw).unwrap_err().message;
        assert!(refused("optar").starts_with(
            "'optar' is not a built-in catalog (did you mean 'optare'?); choose from: optare"
        ));
        assert!(!refused("okta").contains("did you mean"));
        assert!(CatalogName::parse("optare").is_ok());
    }

    #[test]
    fn every_built_in_catalog_loads_and_its_examples_match_their_schemas() {
        assert!(!all().is_empty());
        for catalog in all() {
            for t in &catalog.types {
                crate::event_type::parse_type_name(&t.name, "name").unwrap();
                crate::event_type::parse_channel(&t.channel, "channel").unwrap();
                assert!(t.example.is_object(), "{}: example is an object", t.name);
                if let Some(v) = catalog.validator(&t.name) {
                    crate::event_type::check_against_schema(v, &t.name, &t.example)
                        .unwrap_or_else(|e| panic!("{}: {e}", t.name));
                }
            }
        }
    }

    #[test]
    fn the_optare_catalog_has_every_type_its_documentation_lists() {
        let optare = CatalogName::parse("optare").unwrap().catalog().unwrap();
        // The reference lists 25: 5 user, 3 session, 3 organization, 6 member, 4 OAuth, 4 security.
        assert_eq!(optare.types.len(), 25);
        assert_eq!(
            optare.event_type("session.revoked").unwrap().channel,
            "session"
        );
    }

    #[test]
    fn an_unknown_catalog_is_refused_with_the_choices() {
        let err = CatalogName::parse("nope").unwrap_err();
        assert!(err.message.contains("optare"));
    }

    #[test]
    fn two_catalogs_that_define_the_same_type_cannot_be_enabled_together() {
        let err = parse_catalog_set(&["opal".into(), "parallelworks".into()]).unwrap_err();
        assert!(
            matches!(&err, CatalogSetError::Conflict(m) if m.contains("USER_REMOVED_FROM_GROUP")),
            "{err}"
        );
        assert!(
            parse_catalog_set(&[
                "optare".into(),
                "opal".into(),
                "permit".into(),
                "asgardeo".into()
            ])
            .is_ok()
        );
    }

    #[test]
    fn every_asgardeo_type_has_its_event_uri() {
        let asgardeo = CatalogName::parse("asgardeo").unwrap().catalog().unwrap();
        assert_eq!(asgardeo.types.len(), 17);
        for t in &asgardeo.types {
            assert_eq!(
                t.uri.as_deref(),
                Some(
                    format!(
                        "https://schemas.identity.wso2.org/events/{}/event-type/{}",
                        t.channel, t.name
                    )
                    .as_str()
                )
            );
        }
    }

    #[test]
    fn a_repeated_catalog_is_taken_once() {
        let set = parse_catalog_set(&["optare".into(), "optare".into()]).unwrap();
        assert_eq!(set.len(), 1);
    }
}
