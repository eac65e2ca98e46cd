-- Herald's initial schema. Times are integer milliseconds since the Unix epoch, UTC.
-- Lists and maps are JSON text. Ids are prefixed ULIDs, so ORDER BY id is creation order.

CREATE TABLE organizations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    handle      TEXT NOT NULL UNIQUE,
    catalogs    TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL,
    name        TEXT NOT NULL,
    prefix      TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);
CREATE INDEX api_keys_by_org ON api_keys (org_id);

CREATE TABLE event_types (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL,
    name        TEXT NOT NULL,
    channel     TEXT,
    description TEXT,
    schema      TEXT,
    example     TEXT,
    created_at  INTEGER NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE webhooks (
    id                          TEXT PRIMARY KEY,
    org_id                      TEXT NOT NULL,
    name                        TEXT NOT NULL,
    description                 TEXT,
    url                         TEXT NOT NULL,
    events                      TEXT NOT NULL,
    channels                    TEXT NOT NULL,
    profile                     TEXT NOT NULL,
    secret                      TEXT NOT NULL,
    previous_secret             TEXT,
    previous_secret_expires_at  INTEGER,
    active                      INTEGER NOT NULL,
    headers                     TEXT NOT NULL,
    timeout_ms                  INTEGER,
    retry_schedule              TEXT,
    created_at                  INTEGER NOT NULL,
    updated_at                  INTEGER NOT NULL,
    -- Deleted webhooks are kept (without their secrets) so that their history stays readable.
    deleted_at                  INTEGER
);
CREATE INDEX webhooks_by_org ON webhooks (org_id, id);

CREATE TABLE events (
    org_id          TEXT NOT NULL,
    id              TEXT NOT NULL,
    type            TEXT NOT NULL,
    occurred_at     INTEGER NOT NULL,
    received_at     INTEGER NOT NULL,
    correlation_id  TEXT,
    data            TEXT NOT NULL,
    PRIMARY KEY (org_id, id)
);

CREATE TABLE deliveries (
    id               TEXT PRIMARY KEY,
    org_id           TEXT NOT NULL,
    webhook_id       TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempt_count    INTEGER NOT NULL DEFAULT 0,
    schedule_base    INTEGER NOT NULL DEFAULT 0,
    -- When the next attempt is scheduled (shown to users).
    next_attempt_at  INTEGER,
    -- When the scheduler should look at it: next_attempt_at, or the end of its lease while a
    -- dispatcher holds it. Only pending deliveries have one.
    due_at           INTEGER,
    lease_until      INTEGER,
    last_status      INTEGER,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (due_at) WHERE state = 'pending';
CREATE INDEX deliveries_by_webhook ON deliveries (webhook_id, id);

CREATE TABLE attempts (
    id             TEXT PRIMARY KEY,
    delivery_id    TEXT NOT NULL,
    number         INTEGER NOT NULL,
    started_at     INTEGER NOT NULL,
    duration_ms    INTEGER NOT NULL,
    status         INTEGER,
    error          TEXT,
    error_message  TEXT,
    response_body  TEXT NOT NULL
);
CREATE INDEX attempts_by_delivery ON attempts (delivery_id);
