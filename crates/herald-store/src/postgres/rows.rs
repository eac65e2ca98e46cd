//! Turning rows into domain values. The column lists are SQLite's (`sqlite/rows.rs`), so both
//! backends read the same columns in the same order. Integers are stored as `BIGINT`; values
//! written by Herald are trusted, and a column that fails to convert is a storage error, not a
//! panic.

use serde_json::value::RawValue;
use tokio_postgres::Row;

use herald_core::catalog::CatalogName;
use herald_core::delivery::{Attempt, Delivery, DeliveryState};
use herald_core::event::Event;
use herald_core::event_type::CustomEventType;
use herald_core::org::{ApiKey, KeyRole, OrgHandle, Organization};
use herald_core::profile::{ProfileName, SignatureScheme};
use herald_core::store::StoreError;
use herald_core::subscription::{Mode, State, Subscription, Verification};
use herald_core::webhook::{Webhook, WebhookUrl};
use herald_core::{ApiKeyId, AttemptId, DeliveryId, EventTypeId, OrgId, Timestamp, WebhookId};

use super::DbResult;

pub(crate) use crate::sqlite::rows::{
    API_KEY_COLUMNS, ATTEMPT_COLUMNS, DELIVERY_COLUMNS, EVENT_COLUMNS, EVENT_TYPE_COLUMNS,
    ORG_COLUMNS, SUBSCRIPTION_COLUMNS, WEBHOOK_COLUMNS, to_json,
};

fn bad(column: usize, what: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("column {column} holds an unreadable value: {what}").into())
}

fn json<T: serde::de::DeserializeOwned>(row: &Row, idx: usize) -> DbResult<T> {
    let raw: String = row.try_get(idx)?;
    Ok(serde_json::from_str(&raw).map_err(|e| bad(idx, e))?)
}

fn opt_json<T: serde::de::DeserializeOwned>(row: &Row, idx: usize) -> DbResult<Option<T>> {
    let raw: Option<String> = row.try_get(idx)?;
    Ok(raw
        .map(|r| serde_json::from_str(&r))
        .transpose()
        .map_err(|e| bad(idx, e))?)
}

fn ts(row: &Row, idx: usize) -> DbResult<Timestamp> {
    Ok(Timestamp::from_millis(row.try_get(idx)?))
}

fn opt_ts(row: &Row, idx: usize) -> DbResult<Option<Timestamp>> {
    Ok(row
        .try_get::<_, Option<i64>>(idx)?
        .map(Timestamp::from_millis))
}

/// A `BIGINT` column as a narrower unsigned integer.
pub(crate) fn int<T: TryFrom<i64>>(row: &Row, idx: usize) -> DbResult<T> {
    let v: i64 = row.try_get(idx)?;
    Ok(T::try_from(v).map_err(|_| bad(idx, v))?)
}

pub(crate) fn opt_int<T: TryFrom<i64>>(row: &Row, idx: usize) -> DbResult<Option<T>> {
    let v: Option<i64> = row.try_get(idx)?;
    Ok(v.map(|v| T::try_from(v).map_err(|_| bad(idx, v)))
        .transpose()?)
}

pub(crate) fn org(row: &Row) -> DbResult<Organization> {
    let catalogs: Vec<String> = json(row, 3)?;
    Ok(Organization {
        id: OrgId::from_trusted(row.try_get(0)?),
        name: row.try_get(1)?,
        handle: OrgHandle::from_trusted(row.try_get(2)?),
        catalogs: catalogs
            .into_iter()
            .map(CatalogName::from_trusted)
            .collect(),
        created_at: ts(row, 4)?,
        updated_at: ts(row, 5)?,
    })
}

pub(crate) fn api_key(row: &Row) -> DbResult<ApiKey> {
    Ok(ApiKey {
        id: ApiKeyId::from_trusted(row.try_get(0)?),
        org_id: OrgId::from_trusted(row.try_get(1)?),
        name: row.try_get(2)?,
        prefix: row.try_get(3)?,
        key_hash: row.try_get(4)?,
        created_at: ts(row, 5)?,
        role: KeyRole::from_stored(row.try_get(6)?),
    })
}

pub(crate) fn event_type(row: &Row) -> DbResult<CustomEventType> {
    Ok(CustomEventType {
        id: EventTypeId::from_trusted(row.try_get(0)?),
        org_id: OrgId::from_trusted(row.try_get(1)?),
        name: row.try_get(2)?,
        channel: row.try_get(3)?,
        description: row.try_get(4)?,
        schema: opt_json(row, 5)?,
        example: opt_json(row, 6)?,
        created_at: ts(row, 7)?,
    })
}

pub(crate) fn webhook(row: &Row) -> DbResult<Webhook> {
    let profile: String = row.try_get(7)?;
    let signature: Option<String> = row.try_get(17)?;
    let verification: String = row.try_get(19)?;
    Ok(Webhook {
        id: WebhookId::from_trusted(row.try_get(0)?),
        org_id: OrgId::from_trusted(row.try_get(1)?),
        name: row.try_get(2)?,
        description: row.try_get(3)?,
        url: WebhookUrl::from_trusted(row.try_get(4)?),
        events: json(row, 5)?,
        channels: json(row, 6)?,
        profile: ProfileName::parse(&profile).map_err(|e| bad(7, e.message))?,
        secret: row.try_get(8)?,
        previous_secret: row.try_get(9)?,
        previous_secret_expires_at: opt_ts(row, 10)?,
        active: row.try_get(11)?,
        headers: json(row, 12)?,
        timeout_ms: opt_int(row, 13)?,
        retry_schedule: opt_json(row, 14)?,
        created_at: ts(row, 15)?,
        updated_at: ts(row, 16)?,
        signature: signature
            .map(|s| SignatureScheme::parse(&s).map_err(|e| bad(17, e.message)))
            .transpose()?,
        options: json(row, 18)?,
        verification: Verification::parse(&verification).map_err(|e| bad(19, e.message))?,
        failing_since: opt_ts(row, 20)?,
        disabled_reason: row.try_get(21)?,
        rate_limit_per_second: opt_int(row, 22)?,
    })
}

/// An event from `EVENT_COLUMNS` starting at column `at`.
pub(crate) fn event_at(row: &Row, at: usize) -> DbResult<Event> {
    let data: String = row.try_get(at + 6)?;
    Ok(Event {
        org_id: OrgId::from_trusted(row.try_get(at)?),
        id: row.try_get(at + 1)?,
        event_type: row.try_get(at + 2)?,
        occurred_at: ts(row, at + 3)?,
        received_at: ts(row, at + 4)?,
        correlation_id: row.try_get(at + 5)?,
        data: RawValue::from_string(data).map_err(|e| bad(at + 6, e))?,
    })
}

pub(crate) fn delivery(row: &Row) -> DbResult<Delivery> {
    let state: String = row.try_get(5)?;
    Ok(Delivery {
        id: DeliveryId::from_trusted(row.try_get(0)?),
        org_id: OrgId::from_trusted(row.try_get(1)?),
        webhook_id: WebhookId::from_trusted(row.try_get(2)?),
        event_id: row.try_get(3)?,
        event_type: row.try_get(4)?,
        state: DeliveryState::parse(&state).map_err(|e| bad(5, e.message))?,
        attempt_count: int(row, 6)?,
        next_attempt_at: opt_ts(row, 7)?,
        last_status: opt_int(row, 8)?,
        last_error: row.try_get(9)?,
        created_at: ts(row, 10)?,
        updated_at: ts(row, 11)?,
    })
}

pub(crate) fn attempt(row: &Row) -> DbResult<Attempt> {
    Ok(Attempt {
        id: AttemptId::from_trusted(row.try_get(0)?),
        delivery_id: DeliveryId::from_trusted(row.try_get(1)?),
        number: int(row, 2)?,
        started_at: ts(row, 3)?,
        duration_ms: int(row, 4)?,
        status: opt_int(row, 5)?,
        error: row.try_get(6)?,
        error_message: row.try_get(7)?,
        response_body: row.try_get(8)?,
    })
}

pub(crate) fn subscription(row: &Row) -> DbResult<Subscription> {
    let mode: String = row.try_get(3)?;
    let state: String = row.try_get(4)?;
    Ok(Subscription {
        webhook_id: WebhookId::from_trusted(row.try_get(0)?),
        channel: row.try_get(1)?,
        topic: row.try_get(2)?,
        mode: Mode::parse(&mode).ok_or_else(|| bad(3, "unknown subscription mode"))?,
        state: State::parse(&state).ok_or_else(|| bad(4, "unknown subscription state"))?,
        reason: row.try_get(5)?,
        lease_seconds: int(row, 6)?,
        last_attempt_at: opt_ts(row, 7)?,
        verified_at: opt_ts(row, 8)?,
        expires_at: opt_ts(row, 9)?,
        renew_at: opt_ts(row, 10)?,
    })
}

/// Maps every row with `f`.
pub(crate) fn all<T>(rows: Vec<Row>, f: impl Fn(&Row) -> DbResult<T>) -> DbResult<Vec<T>> {
    rows.iter().map(f).collect()
}

/// A `u32` or `u16` as the `BIGINT` it is stored as.
pub(crate) fn big(v: impl Into<i64>) -> i64 {
    v.into()
}
