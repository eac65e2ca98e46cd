-- Deliveries name their event by its place in `events` (an explicit sequence number, which
-- VACUUM keeps) instead of by the producer's id. The index by event id took a random leaf for
-- every delivery, since producers' ids (UUIDs, often) come in no order: with such ids `batch`
-- delivered half as much. Retention finds an event's deliveries through the sequence number,
-- whose index only ever grows at its end. Rebuilding copies `events` once; on a large database
-- this migration takes a while.

CREATE TABLE events_sequenced (
    seq             INTEGER PRIMARY KEY,
    org_id          TEXT NOT NULL,
    id              TEXT NOT NULL,
    type            TEXT NOT NULL,
    occurred_at     INTEGER NOT NULL,
    received_at     INTEGER NOT NULL,
    correlation_id  TEXT,
    data            TEXT NOT NULL,
    UNIQUE (org_id, id)
);
INSERT INTO events_sequenced (seq, org_id, id, type, occurred_at, received_at, correlation_id, data)
    SELECT rowid, org_id, id, type, occurred_at, received_at, correlation_id, data
    FROM events ORDER BY rowid;
DROP TABLE events;
ALTER TABLE events_sequenced RENAME TO events;
CREATE INDEX events_by_age ON events (received_at);

ALTER TABLE deliveries ADD COLUMN event_seq INTEGER;
UPDATE deliveries SET event_seq =
    (SELECT seq FROM events e WHERE e.org_id = deliveries.org_id AND e.id = deliveries.event_id);
DROP INDEX deliveries_by_event;
CREATE INDEX deliveries_by_event_seq ON deliveries (event_seq);
