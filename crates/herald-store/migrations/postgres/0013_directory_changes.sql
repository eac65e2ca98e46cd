-- Every change to an organization's configuration (the organization, its event types, webhooks
-- and WebSub subscriptions), by transaction. Nodes cache organizations and hear of another
-- node's change a moment after its commit (0001's notices); ingest fans out from its node's copy
-- and stores the events only if no change was committed after that copy was read, so that a
-- webhook created on one node gets every event posted on another after its creation was
-- answered. Rows are forgotten after an hour (`Store::sweep_deleted_orgs`).
CREATE TABLE directory_changes (
    org_id      TEXT COLLATE "C" NOT NULL,
    xid         xid8 NOT NULL,
    changed_at  BIGINT NOT NULL,
    PRIMARY KEY (org_id, xid)
);

-- 0001's function, which now also records the change. Appending takes no lock another
-- transaction waits for, unlike a counter on the organization's row: a change to several
-- rows at once and an attempt's outcome on one of them would deadlock on it. A webhook's
-- failing streak starting or ending (attempts' outcomes; nothing ingest fans out by) is
-- announced but not recorded: an endpoint that flaps would otherwise send every node's
-- ingest in flight back to read the organization again.
CREATE OR REPLACE FUNCTION herald_directory_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    org TEXT;
BEGIN
    IF TG_TABLE_NAME = 'organizations' THEN
        org := COALESCE(NEW.id, OLD.id);
    ELSE
        org := COALESCE(NEW.org_id, OLD.org_id);
    END IF;
    PERFORM pg_notify('herald_directory', org);
    IF TG_TABLE_NAME = 'webhooks' AND TG_OP = 'UPDATE'
        AND to_jsonb(OLD) - 'failing_since' = to_jsonb(NEW) - 'failing_since' THEN
        RETURN NULL;
    END IF;
    INSERT INTO directory_changes (org_id, xid, changed_at)
        VALUES (org, pg_current_xact_id(), (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT)
        ON CONFLICT (org_id, xid) DO NOTHING;
    RETURN NULL;
END $$;
