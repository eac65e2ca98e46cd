//! Turning rows into domain values. Values written by Herald are trusted; JSON columns that fail
//! to parse are reported as storage errors rather than panics.

use rusqlite::Row;
use serde_json::value::RawValue;

use herald_core::catalog::CatalogName;
use herald_core::delivery::{Attempt, Delivery, DeliveryState};
use herald_core::event::Event;
use herald_core::event_type::CustomEventType;
use herald_core::org::{ApiKey, KeyRole, OrgHandle, Organization};
use herald_core::profile::{ProfileName, SignatureScheme};
use herald_core::retry::RetrySchedule;
use herald_core::subscription::{Mode, State, Subscription, Verification};
use herald_core::webhook::{Webhook, WebhookUrl};
use herald_core::{ApiKeyId, AttemptId, DeliveryId, EventTypeId, OrgId, Timestamp, WebhookId};

fn json<T: serde::de::DeserializeOwned>(raw: &str, idx: usize) -> rusqlite::Result<T> {
    serde_json::from_str(raw).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn ts(v: i64) -> Timestamp {
    Timestamp::from_millis(v)
}

fn opt_ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp::from_millis)
}

pub(crate) const ORG_COLUMNS: &str = "id, name, handle, catalogs, created_at, updated_at";

pub(crate) fn org(row: &Row<'_>) -> rusqlite::Result<Organization> {
    let catalogs: Vec<String> = json(&row.get::<_, String>(3)?, 3)?;
    Ok(Organization {
        id: OrgId::from_trusted(row.get(0)?),
        name: row.get(1)?,
        handle: OrgHandle::from_trusted(row.get(2)?),
        catalogs: catalogs
            .into_iter()
            .map(CatalogName::from_trusted)
            .collect(),
        created_at: ts(row.get(4)?),
        updated_at: ts(row.get(5)?),
    })
}

pub(crate) const API_KEY_COLUMNS: &str = "id, org_id, name, prefix, key_hash, created_at, role";

pub(crate) fn api_key(row: &Row<'_>) -> rusqlite::Result<ApiKey> {
    Ok(ApiKey {
        id: ApiKeyId::from_trusted(row.get(0)?),
        org_id: OrgId::from_trusted(row.get(1)?),
        name: row.get(2)?,
        prefix: row.get(3)?,
        key_hash: row.get(4)?,
        created_at: ts(row.get(5)?),
        role: KeyRole::from_stored(&row.get::<_, String>(6)?),
    })
}

pub(crate) const EVENT_TYPE_COLUMNS: &str =
    "id, org_id, name, channel, description, schema, example, created_at";

pub(crate) fn event_type(row: &Row<'_>) -> rusqlite::Result<CustomEventType> {
    let schema: Option<String> = row.get(5)?;
    let example: Option<String> = row.get(6)?;
    Ok(CustomEventType {
        id: EventTypeId::from_trusted(row.get(0)?),
        org_id: OrgId::from_trusted(row.get(1)?),
        name: row.get(2)?,
        channel: row.get(3)?,
        description: row.get(4)?,
        schema: schema.map(|s| json(&s, 5)).transpose()?,
        example: example.map(|s| json(&s, 6)).transpose()?,
        created_at: ts(row.get(7)?),
    })
}

pub(crate) const WEBHOOK_COLUMNS: &str = "id, org_id, name, description, url, events, channels, profile, secret, \
     previous_secret, previous_secret_expires_at, active, headers, timeout_ms, retry_schedule, \
     created_at, updated_at, signature, options, verification, failing_since, disabled_reason, rate_limit_per_second";

pub(crate) fn webhook(row: &Row<'_>) -> rusqlite::Result<Webhook> {
    let profile: String = row.get(7)?;
    let retry: Option<String> = row.get(14)?;
    let signature: Option<String> = row.get(17)?;
    Ok(Webhook {
        id: WebhookId::from_trusted(row.get(0)?),
        org_id: OrgId::from_trusted(row.get(1)?),
        name: row.get(2)?,
        description: row.get(3)?,
        url: WebhookUrl::from_trusted(row.get(4)?),
        events: json(&row.get::<_, String>(5)?, 5)?,
        channels: json(&row.get::<_, String>(6)?, 6)?,
        profile: ProfileName::parse(&profile).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, Box::new(e))
        })?,
        secret: row.get(8)?,
        previous_secret: row.get(9)?,
        previous_secret_expires_at: opt_ts(row.get(10)?),
        active: row.get(11)?,
        headers: json(&row.get::<_, String>(12)?, 12)?,
        timeout_ms: row.get(13)?,
        retry_schedule: retry.map(|r| json::<RetrySchedule>(&r, 14)).transpose()?,
        created_at: ts(row.get(15)?),
        updated_at: ts(row.get(16)?),
        signature: signature
            .map(|s| {
                SignatureScheme::parse(&s).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        17,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })
            })
            .transpose()?,
        options: json(&row.get::<_, String>(18)?, 18)?,
        verification: Verification::parse(&row.get::<_, String>(19)?).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(19, rusqlite::types::Type::Text, Box::new(e))
        })?,
        failing_since: opt_ts(row.get(20)?),
        disabled_reason: row.get(21)?,
        rate_limit_per_second: row.get(22)?,
    })
}

pub(crate) const EVENT_COLUMNS: &str =
    "org_id, id, type, occurred_at, received_at, correlation_id, data";

/// An event from `EVENT_COLUMNS` starting at column `at`.
pub(crate) fn event_at(row: &Row<'_>, at: usize) -> rusqlite::Result<Event> {
    let data: String = row.get(at + 6)?;
    Ok(Event {
        org_id: OrgId::from_trusted(row.get(at)?),
        id: row.get(at + 1)?,
        event_type: row.get(at + 2)?,
        occurred_at: ts(row.get(at + 3)?),
        received_at: ts(row.get(at + 4)?),
        correlation_id: row.get(at + 5)?,
        data: RawValue::from_string(data).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(
                at + 6,
                rusqlite::types::Type::Text,
                Box::new(e),
            )
        })?,
    })
}

pub(crate) const DELIVERY_COLUMNS: &str = "id, org_id, webhook_id, event_id, event_type, state, attempt_count, \
     next_attempt_at, last_status, last_error, created_at, updated_at";

pub(crate) fn delivery(row: &Row<'_>) -> rusqlite::Result<Delivery> {
    let state: String = row.get(5)?;
    Ok(Delivery {
        id: DeliveryId::from_trusted(row.get(0)?),
        org_id: OrgId::from_trusted(row.get(1)?),
        webhook_id: WebhookId::from_trusted(row.get(2)?),
        event_id: row.get(3)?,
        event_type: row.get(4)?,
        state: DeliveryState::parse(&state).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, Box::new(e))
        })?,
        attempt_count: row.get(6)?,
        next_attempt_at: opt_ts(row.get(7)?),
        last_status: row.get(8)?,
        last_error: row.get(9)?,
        created_at: ts(row.get(10)?),
        updated_at: ts(row.get(11)?),
    })
}

pub(crate) const ATTEMPT_COLUMNS: &str = "id, delivery_id, number, started_at, duration_ms, status, error, \
     error_message, response_body";

pub(crate) fn attempt(row: &Row<'_>) -> rusqlite::Result<Attempt> {
    Ok(Attempt {
        id: AttemptId::from_trusted(row.get(0)?),
        delivery_id: DeliveryId::from_trusted(row.get(1)?),
        number: row.get(2)?,
        started_at: ts(row.get(3)?),
        duration_ms: row.get(4)?,
        status: row.get(5)?,
        error: row.get(6)?,
        error_message: row.get(7)?,
        response_body: row.get(8)?,
    })
}

pub(crate) const SUBSCRIPTION_COLUMNS: &str = "webhook_id, channel, topic, mode, state, reason, lease_seconds, \
     last_attempt_at, verified_at, expires_at, renew_at";

fn bad_text(idx: usize, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        idx,
        rusqlite::types::Type::Text,
        what.to_owned().into(),
    )
}

pub(crate) fn subscription(row: &Row<'_>) -> rusqlite::Result<Subscription> {
    let mode: String = row.get(3)?;
    let state: String = row.get(4)?;
    Ok(Subscription {
        webhook_id: WebhookId::from_trusted(row.get(0)?),
        channel: row.get(1)?,
        topic: row.get(2)?,
        mode: Mode::parse(&mode).ok_or_else(|| bad_text(3, "unknown subscription mode"))?,
        state: State::parse(&state).ok_or_else(|| bad_text(4, "unknown subscription state"))?,
        reason: row.get(5)?,
        lease_seconds: row.get(6)?,
        last_attempt_at: opt_ts(row.get(7)?),
        verified_at: opt_ts(row.get(8)?),
        expires_at: opt_ts(row.get(9)?),
        renew_at: opt_ts(row.get(10)?),
    })
}

/// Serialises a value for a JSON column.
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("domain values always serialise")
}
