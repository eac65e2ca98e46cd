//! Event types: the built-in catalogs, and an organization's own types with optional schemas.

use serde::Serialize;

use herald_core::catalog;
use herald_core::event_type::{
    CustomEventType, JsonText, check_against_schema, compile_schema, parse_channel,
    parse_new_type_name,
};
use herald_core::{EventTypeId, Invalid, OrgId};

use super::cancel_safe::write_then_forget;
use super::{Scope, ServiceError, ServiceResult};
use crate::app::AppState;

/// The most a type's schema or example may take, written as compact JSON: a compiled schema
/// weighs many times its text, and the organization's list of types comes whole in one answer.
const MAX_SCHEMA_BYTES: usize = 16 * 1024;

#[derive(Debug, Default)]
pub struct EventTypeInput {
    pub name: String,
    pub channel: Option<String>,
    pub description: Option<String>,
    pub schema: Option<serde_json::Value>,
    pub example: Option<serde_json::Value>,
}

/// One event type an organization can use, whichever catalog it comes from.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AvailableType {
    pub name: String,
    pub channel: Option<String>,
    pub description: Option<String>,
    /// The catalog's name, or `custom` for the organization's own types.
    pub source: String,
    /// The example and the schema as stored: the organization's own types' are written out as
    /// their text, not parsed again for the answer.
    #[schema(value_type = Option<serde_json::Value>)]
    pub example: Option<JsonText>,
    #[schema(value_type = Option<serde_json::Value>)]
    pub schema: Option<JsonText>,
    /// The type's URI where its catalog names events by URI (Asgardeo's), as
    /// `GET /v1/event-types` gives it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

pub async fn register(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    input: EventTypeInput,
) -> ServiceResult<CustomEventType> {
    // Checked against the organization's limit, then written: one change at a time.
    let (scope, owner) = (scope.clone(), org.clone());
    super::one_change_at_a_time(state, org, move |state| async move {
        register_checked(&state, &scope, &owner, input).await
    })
    .await
}

async fn register_checked(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    input: EventTypeInput,
) -> ServiceResult<CustomEventType> {
    let snapshot = super::org_snapshot(state, scope, org).await?;
    let most = state.settings.limits.max_event_types_per_org;
    if snapshot.custom_type_count() >= most as usize {
        return Err(ServiceError::Conflict(format!(
            "the organization already has {most} event types of its own, the most one may have \
             (HERALD_MAX_EVENT_TYPES_PER_ORG); delete the ones it no longer needs"
        )));
    }
    let name = parse_new_type_name(&input.name, "name")?;
    if herald_core::event_type::is_reserved(&name) {
        return Err(Invalid::new(
            "name",
            format!("'{name}' is reserved for Herald's own events"),
        )
        .into());
    }
    if let Some((catalog, _)) = snapshot.catalog_type(&name) {
        return Err(ServiceError::Conflict(format!(
            "'{name}' is already defined by the '{}' catalog this organization uses",
            catalog.name
        )));
    }
    let channel = input
        .channel
        .map(|c| parse_channel(&c, "channel"))
        .transpose()?;
    if channel.as_deref() == Some(herald_core::event_type::OPERATIONS_CHANNEL) {
        return Err(Invalid::new(
            "channel",
            "'operations' is reserved for Herald's own events (webhook.disabled, \
             delivery.exhausted…); choose another channel",
        )
        .into());
    }
    let description = herald_core::webhook::parse_description(input.description)?;
    for (field, value) in [("schema", &input.schema), ("example", &input.example)] {
        let written = value.as_ref().map_or(0, |v| v.to_string().len());
        if written > MAX_SCHEMA_BYTES {
            return Err(Invalid::new(
                field,
                format!(
                    "is {written} bytes written as compact JSON; at most {} KiB are taken (the \
                     built-in catalogs' largest is under 2 KiB)",
                    MAX_SCHEMA_BYTES / 1024
                ),
            )
            .into());
        }
    }
    // Compiled and checked as they are kept: as JavaScript reads them, as events' data is.
    let schema = input.schema.as_ref().map(JsonText::as_javascript_writes);
    let example = input.example.as_ref().map(JsonText::as_javascript_writes);
    if let Some(schema) = &schema {
        let validator = compile_schema(&read_back(schema, "schema")?)?;
        if let Some(example) = &example {
            check_against_schema(&validator, &name, &read_back(example, "example")?)
                .map_err(|e| Invalid::new("example", e.message))?;
        }
    }
    if input.example.as_ref().is_some_and(|e| !e.is_object()) {
        return Err(Invalid::new(
            "example",
            "must be a JSON object (an example of the event's data)",
        )
        .into());
    }
    let event_type = CustomEventType {
        id: EventTypeId::generate(),
        org_id: org.clone(),
        name,
        channel,
        description,
        schema,
        example,
        created_at: state.clock.now(),
    };
    let created = write_then_forget(state, org, "organization", |store| async move {
        store
            .create_event_type(&event_type)
            .await
            .map(|()| event_type)
    })
    .await?;
    tracing::info!(org = %org, event_type = created.name, channel = created.channel.as_deref(), "event type registered");
    if let Some(channel) = &created.channel
        && !snapshot.knows_channel(channel)
    {
        // A new channel, which WebSub webhooks that take every channel now receive.
        super::subscriptions::subscribe_new_topics_soon(state, org);
    }
    Ok(created)
}

/// `text` parsed again: JavaScript's JSON always is, so a failure is named, not a panic.
fn read_back(text: &JsonText, field: &str) -> Result<serde_json::Value, Invalid> {
    text.value()
        .map_err(|e| Invalid::new(field, format!("could not be read back: {e}")))
}

/// Deletes one of the organization's own types. Events already stored keep it. Refused while
/// a webhook names it, or names its channel and it is that channel's last type (their
/// subscriptions would name what no longer exists, and could not be saved again unchanged),
/// or while a WebSub webhook receives its channel (see below).
pub async fn unregister(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    name: &str,
) -> ServiceResult<()> {
    // Checked against the webhooks that subscribe to it, then deleted: one change at a time.
    let (scope, owner, name) = (scope.clone(), org.clone(), name.to_owned());
    super::one_change_at_a_time(state, org, move |state| async move {
        unregister_checked(&state, &scope, &owner, &name).await
    })
    .await
}

async fn unregister_checked(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    name: &str,
) -> ServiceResult<()> {
    let snapshot = super::org_snapshot(state, scope, org).await?;
    let Some(own) = snapshot.custom_type(name) else {
        if let Some((catalog, _)) = snapshot.catalog_type(name) {
            return Err(ServiceError::Conflict(format!(
                "'{name}' comes from the '{}' catalog, not from this organization's own types; \
                 to stop using it, change the organization's catalogs",
                catalog.name
            )));
        }
        return Err(ServiceError::NoSuchName {
            what: "event type of the organization's own",
            name: name.to_owned(),
            suggestion: snapshot.closest_custom_type(name).map(str::to_owned),
        });
    };
    let naming = |wants: &dyn Fn(&herald_core::webhook::Webhook) -> bool| -> String {
        super::name_webhooks(
            snapshot
                .webhooks()
                .iter()
                .filter(|w| wants(w))
                .map(|w| (&**w, None)),
        )
    };
    let by_name = naming(&|w| w.events.iter().any(|e| e == name));
    if !by_name.is_empty() {
        return Err(ServiceError::Conflict(format!(
            "webhooks subscribe to '{name}' by name ({}); take it out of their events first",
            by_name
        )));
    }
    if let Some(channel) = own.channel.as_deref()
        && snapshot.types_in_channel(channel) == 1
    {
        let by_channel = naming(&|w| w.channels.iter().any(|c| c == channel));
        if !by_channel.is_empty() {
            return Err(ServiceError::Conflict(format!(
                "'{name}' is the last type of the channel '{channel}', which webhooks subscribe \
                 to ({}); take the channel out of their channels first",
                by_channel
            )));
        }
    }
    // A delivery finds its channel through its event's type when it is sent: without the type,
    // one to a webhook that verifies its intent per channel (WebSub) could never go.
    if let Some(channel) = own.channel.as_deref() {
        let verifying = naming(&|w| {
            w.verification == herald_core::subscription::Verification::Websub
                && snapshot.channels_of(w).iter().any(|c| c == channel)
        });
        if !verifying.is_empty() {
            return Err(ServiceError::Conflict(format!(
                "webhooks that verify their intent per channel (WebSub) receive '{name}' through \
                 the channel '{channel}' ({}); their deliveries of it need its channel, so take \
                 the channel out of their subscriptions first",
                verifying
            )));
        }
    }
    let (owner, name) = (org.clone(), name.to_owned());
    write_then_forget(state, org, "event type", |store| async move {
        store.delete_event_type(&owner, &name).await.map(|()| name)
    })
    .await
    .map(|name| tracing::info!(org = %org, event_type = name, "event type deleted"))
}

/// Every type the organization can post: its catalogs' and its own.
pub async fn list_for_org(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
) -> ServiceResult<Vec<AvailableType>> {
    let snapshot = super::org_snapshot(state, scope, org).await?;
    let mut out: Vec<AvailableType> = snapshot
        .org
        .catalogs
        .iter()
        .filter_map(|c| c.catalog())
        .flat_map(|c| {
            c.types.iter().map(|t| AvailableType {
                name: t.name.clone(),
                channel: Some(t.channel.clone()),
                description: Some(t.description.clone()),
                source: c.name.clone(),
                example: Some(JsonText::of(&t.example)),
                schema: t.schema.as_ref().map(JsonText::of),
                uri: t.uri.clone(),
            })
        })
        .collect();
    let custom = state
        .store
        .list_event_types(org)
        .await
        .map_err(ServiceError::from_store("organization"))?;
    out.extend(custom.into_iter().map(|t| AvailableType {
        name: t.name,
        channel: t.channel,
        description: t.description,
        source: "custom".into(),
        example: t.example,
        schema: t.schema,
        uri: None,
    }));
    Ok(out)
}

/// The built-in catalogs, for browsing before choosing.
pub fn catalogs() -> &'static [catalog::Catalog] {
    catalog::all()
}
