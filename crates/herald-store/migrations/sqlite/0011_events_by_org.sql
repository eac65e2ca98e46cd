-- An organization's events by the time they were received (`GET /v1/orgs/{org}/events`, newest
-- first; and retention, one organization after another). Its entries end, as in every SQLite
-- index, with the row's rowid: the event's sequence number, which orders retention's walk
-- through events received in the same millisecond. It replaces the index by age alone, which
-- only retention read: one index less to write for every event stored.
DROP INDEX IF EXISTS events_by_age;
CREATE INDEX events_by_org ON events (org_id, received_at);
