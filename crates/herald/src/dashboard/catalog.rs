//! The organization's event catalog: every type it can send, by channel, with its description
//! and example data; and the form that registers one of its own types (with an optional JSON
//! Schema and example, typed as JSON text). A refused form keeps what was typed.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use serde::Serialize;

use herald_core::Invalid;
use herald_core::org::Organization;

use super::confirm;
use super::error::{DashError, DashResult, describe};
use super::forms::Form;
use super::orgs::org_id;
use super::session::{Flash, Post, Signed};
use super::templates::{self, Layout};
use crate::app::AppState;
use crate::service::event_types::EventTypeInput;
use crate::service::{ServiceError, event_types, orgs};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orgs/{org}/catalog", get(show_catalog))
        .route("/orgs/{org}/event-types", post(register_type))
        .route("/orgs/{org}/event-types/delete", post(unregister_type))
}

/// The new-type form as typed.
#[derive(Serialize, Default)]
struct TypeForm {
    name: String,
    channel: String,
    description: String,
    schema: String,
    example: String,
}

impl TypeForm {
    fn read(form: &Form) -> Self {
        Self {
            name: form.text("name"),
            channel: form.text("channel"),
            description: form.text("description"),
            schema: form.get("schema").unwrap_or_default().to_owned(),
            example: form.get("example").unwrap_or_default().to_owned(),
        }
    }

    fn input(&self) -> Result<EventTypeInput, Invalid> {
        let optional = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
        Ok(EventTypeInput {
            name: self.name.clone(),
            channel: optional(&self.channel),
            description: optional(&self.description),
            schema: json_field(&self.schema, "schema")?,
            example: json_field(&self.example, "example")?,
        })
    }
}

/// An optional JSON text area: empty is absent; anything else must parse.
fn json_field(raw: &str, field: &str) -> Result<Option<serde_json::Value>, Invalid> {
    if raw.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(raw).map(Some).map_err(|e| {
        Invalid::new(
            field,
            format!(
                "is not valid JSON (line {}, column {}: {})",
                e.line(),
                e.column(),
                describe_json_error(&e)
            ),
        )
    })
}

/// serde_json's message without its own " at line L column C" (said once, above).
fn describe_json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

#[derive(Serialize)]
struct TypeView {
    name: String,
    description: Option<String>,
    source: String,
    example: Option<String>,
    has_schema: bool,
}

#[derive(Serialize)]
struct ChannelGroup {
    channel: String,
    types: Vec<TypeView>,
}

#[derive(Serialize)]
struct CatalogPage {
    org_id: String,
    catalogs: String,
    groups: Vec<ChannelGroup>,
    form: TypeForm,
    error: Option<String>,
    /// The field the error is about (`name`, `schema`, `example`…).
    error_field: Option<String>,
}

/// Herald's own news about the organization's webhooks: not posted by it, but its webhooks
/// may subscribe to them like to any other type.
fn operations_group() -> ChannelGroup {
    use herald_core::event_type::{
        DELIVERY_EXHAUSTED, OPERATIONAL_TYPES, OPERATIONS_CHANNEL, WEBHOOK_DISABLED,
        WEBHOOK_ENABLED,
    };
    let description = |name: &str| match name {
        WEBHOOK_DISABLED => {
            "Herald disabled a webhook: its endpoint answered 410 Gone, or every attempt failed for days. Data: webhook, reason."
        }
        WEBHOOK_ENABLED => "A webhook was enabled again. Data: webhook.",
        DELIVERY_EXHAUSTED => {
            "A delivery failed its last attempt (or its endpoint's circuit stayed open past its retry schedule). Data: webhook, delivery, attempts, last_error."
        }
        _ => "",
    };
    ChannelGroup {
        channel: OPERATIONS_CHANNEL.to_owned(),
        types: OPERATIONAL_TYPES
            .iter()
            .map(|name| TypeView {
                name: (*name).to_owned(),
                description: Some(description(name).to_owned()),
                source: "herald".to_owned(),
                example: None,
                has_schema: false,
            })
            .collect(),
    }
}

async fn show_catalog(
    State(state): State<AppState>,
    signed: Signed,
    Path(org): Path<String>,
) -> DashResult<Response> {
    let org = orgs::get(&state, &signed.scope, &org_id(&org)?).await?;
    catalog_page(&state, &signed, &org, TypeForm::default(), None).await
}

async fn register_type(
    State(state): State<AppState>,
    Path(org): Path<String>,
    post: Post,
) -> DashResult<Response> {
    let Post { signed, form } = post;
    let org = orgs::get(&state, &signed.scope, &org_id(&org)?).await?;
    let typed = TypeForm::read(&form);
    let registered = match typed.input() {
        Ok(input) => event_types::register(&state, &signed.scope, &org.id, input).await,
        Err(invalid) => Err(invalid.into()),
    };
    match registered {
        Ok(t) => {
            let flash = Flash::ok(format!(
                "Event type {} registered: webhooks can subscribe to it and events of it can be sent.",
                t.name
            ));
            Ok(signed
                .flash_then_go(&state, flash, &format!("/orgs/{}/catalog", org.id))
                .await)
        }
        Err(ServiceError::NotFound(_)) => Err(DashError::not_found()),
        Err(e) => {
            let field = match &e {
                ServiceError::Invalid(i) => Some(
                    i.field
                        .split(['[', '.', '/'])
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                ),
                ServiceError::Conflict(_) => Some("name".to_owned()),
                _ => None,
            };
            let (status, message) = describe(e);
            catalog_page(&state, &signed, &org, typed, Some((status, message, field))).await
        }
    }
}

/// Deletes one of the organization's own types (named in the form: names may hold `/`).
async fn unregister_type(
    State(state): State<AppState>,
    Path(org): Path<String>,
    post: Post,
) -> DashResult<Response> {
    let Post { signed, form } = post;
    let org = org_id(&org)?;
    let name = form.text("name");
    if !confirm::confirmed(&form) {
        let back = format!("/orgs/{org}/catalog");
        let question = confirm::Question {
            title: "Delete this event type?",
            consequence: &format!(
                "The organization's own type {name} goes; events already stored keep it, and new ones of it are refused."
            ),
            go: "Delete",
            back: &back,
        };
        let action = format!("/orgs/{org}/event-types/delete");
        return confirm::ask(&state, &signed, &org, &form, &action, question).await;
    }
    let flash = match event_types::unregister(&state, &signed.scope, &org, &name).await {
        Ok(()) => Flash::ok(format!(
            "Event type {name} deleted; events already stored keep it."
        )),
        Err(ServiceError::NotFound("organization")) => return Err(DashError::not_found()),
        Err(e) => Flash::error(describe(e).1),
    };
    Ok(signed
        .flash_then_go(&state, flash, &format!("/orgs/{org}/catalog"))
        .await)
}

async fn catalog_page(
    state: &AppState,
    signed: &Signed,
    org: &Organization,
    form: TypeForm,
    error: Option<(StatusCode, String, Option<String>)>,
) -> DashResult<Response> {
    let mut types = event_types::list_for_org(state, &signed.scope, &org.id).await?;
    types.sort_by(|a, b| (&a.channel, &a.name).cmp(&(&b.channel, &b.name)));
    let mut groups: Vec<ChannelGroup> = Vec::new();
    for t in types {
        let channel = t.channel.clone().unwrap_or_else(|| "(no channel)".into());
        let view = TypeView {
            example: t
                .example
                .and_then(|e| e.value().ok())
                .and_then(|e| serde_json::to_string_pretty(&e).ok()),
            has_schema: t.schema.is_some(),
            name: t.name,
            description: t.description,
            source: t.source,
        };
        match groups.last_mut() {
            Some(g) if g.channel == channel => g.types.push(view),
            _ => groups.push(ChannelGroup {
                channel,
                types: vec![view],
            }),
        }
    }
    groups.push(operations_group());
    let status = error.as_ref().map_or(StatusCode::OK, |(s, _, _)| *s);
    let page = CatalogPage {
        org_id: org.id.to_string(),
        form,
        error_field: error.as_ref().and_then(|(_, _, f)| f.clone()),
        error: error.map(|(_, m, _)| m),
        catalogs: super::orgs::catalogs_named(org),
        groups,
    };
    let layout = Layout::new(
        state,
        signed,
        format!("Event catalog of {}", org.name),
        Some(org),
    )
    .await;
    Ok(templates::render(status, "catalog.html", &layout, page))
}
