-- An organization's events by the time they were received, then by id
-- (`GET /v1/orgs/{org}/events`, newest first). Built concurrently, without a transaction
-- (`postgres/migrate.rs`, CONCURRENT_INDEXES), so that nodes still running go on storing
-- events meanwhile: one statement only.
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_by_org ON events (org_id, received_at, id);
