-- An organization's events, newest first (`GET /v1/orgs/{org}/events`). The key is the
-- organization and then, as in every SQLite index, the row's rowid: here the event's sequence
-- number, so each organization's events are in the order they were stored.
CREATE INDEX events_by_org ON events (org_id);
