-- Herald's initial schema (PostgreSQL). The same tables as SQLite's 0001: times are BIGINT
-- milliseconds since the Unix epoch, UTC; lists, maps and event data are JSON *text* (not jsonb,
-- which would reorder keys: stored event data is sent back byte for byte). Ids are prefixed
-- ULIDs, so ORDER BY id is creation order; ids and names sort bytewise (COLLATE "C"), as in SQLite,
-- whatever the database's locale.

CREATE TABLE organizations (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL,
    handle      TEXT NOT NULL UNIQUE,
    catalogs    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id          TEXT COLLATE "C" PRIMARY KEY,
    org_id      TEXT NOT NULL,
    name        TEXT COLLATE "C" NOT NULL,
    prefix      TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);
CREATE INDEX api_keys_by_org ON api_keys (org_id);

CREATE TABLE event_types (
    id          TEXT COLLATE "C" PRIMARY KEY,
    org_id      TEXT NOT NULL,
    name        TEXT COLLATE "C" NOT NULL,
    channel     TEXT,
    description TEXT,
    schema      TEXT,
    example     TEXT,
    created_at  BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE webhooks (
    id                          TEXT COLLATE "C" PRIMARY KEY,
    org_id                      TEXT NOT NULL,
    name                        TEXT COLLATE "C" NOT NULL,
    description                 TEXT,
    url                         TEXT NOT NULL,
    events                      TEXT NOT NULL,
    channels                    TEXT NOT NULL,
    profile                     TEXT NOT NULL,
    secret                      TEXT NOT NULL,
    previous_secret             TEXT,
    previous_secret_expires_at  BIGINT,
    active                      BOOLEAN NOT NULL,
    headers                     TEXT NOT NULL,
    timeout_ms                  BIGINT,
    retry_schedule              TEXT,
    created_at                  BIGINT NOT NULL,
    updated_at                  BIGINT NOT NULL,
    -- Deleted webhooks are kept (without their secrets) so that their history stays readable.
    deleted_at                  BIGINT
);
CREATE INDEX webhooks_by_org ON webhooks (org_id, id);

CREATE TABLE events (
    org_id          TEXT NOT NULL,
    id              TEXT COLLATE "C" NOT NULL,
    type            TEXT NOT NULL,
    occurred_at     BIGINT NOT NULL,
    received_at     BIGINT NOT NULL,
    correlation_id  TEXT,
    data            TEXT NOT NULL,
    PRIMARY KEY (org_id, id)
);

CREATE TABLE deliveries (
    id               TEXT COLLATE "C" PRIMARY KEY,
    org_id           TEXT NOT NULL,
    webhook_id       TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempt_count    BIGINT NOT NULL DEFAULT 0,
    schedule_base    BIGINT NOT NULL DEFAULT 0,
    -- When the next attempt is scheduled (shown to users).
    next_attempt_at  BIGINT,
    -- When a scheduler should look at it: next_attempt_at, or the end of its lease while a
    -- node holds it (so an expired lease is simply due). Only pending deliveries have one.
    due_at           BIGINT,
    lease_until      BIGINT,
    last_status      BIGINT,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (due_at) WHERE state = 'pending';
CREATE INDEX deliveries_by_webhook ON deliveries (webhook_id, id);

CREATE TABLE attempts (
    id             TEXT COLLATE "C" PRIMARY KEY,
    delivery_id    TEXT NOT NULL,
    number         BIGINT NOT NULL,
    started_at     BIGINT NOT NULL,
    duration_ms    BIGINT NOT NULL,
    status         BIGINT,
    error          TEXT,
    error_message  TEXT,
    response_body  TEXT NOT NULL
);
CREATE INDEX attempts_by_delivery ON attempts (delivery_id);

-- Every node keeps organizations and their webhooks and event types in memory. A change, made
-- by whichever node, is announced on the channel `herald_directory` with the organization's id,
-- and every node (listening) forgets its copy. Triggers catch every path that writes.
CREATE FUNCTION herald_directory_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'organizations' THEN
        PERFORM pg_notify('herald_directory', COALESCE(NEW.id, OLD.id));
    ELSE
        PERFORM pg_notify('herald_directory', COALESCE(NEW.org_id, OLD.org_id));
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER organizations_changed AFTER INSERT OR UPDATE OR DELETE ON organizations
    FOR EACH ROW EXECUTE FUNCTION herald_directory_changed();
CREATE TRIGGER event_types_changed AFTER INSERT OR UPDATE OR DELETE ON event_types
    FOR EACH ROW EXECUTE FUNCTION herald_directory_changed();
CREATE TRIGGER webhooks_changed AFTER INSERT OR DELETE ON webhooks
    FOR EACH ROW EXECUTE FUNCTION herald_directory_changed();
-- Recording an attempt's outcome rewrites a webhook's failure streak with the same value;
-- only real changes are announced.
CREATE TRIGGER webhooks_updated AFTER UPDATE ON webhooks
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION herald_directory_changed();
