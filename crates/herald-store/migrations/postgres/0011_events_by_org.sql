-- An organization's events by the time they were received, then by id
-- (`GET /v1/orgs/{org}/events`, newest first). Building it holds new events back (inserts wait)
-- for as long as it takes: measured in BENCHMARKS ("An organization's event list").
CREATE INDEX events_by_org ON events (org_id, received_at, id);
