-- Retention: old events are found by age, and an event's deliveries by the event.
CREATE INDEX events_by_age ON events (received_at);
CREATE INDEX deliveries_by_event ON deliveries (org_id, event_id);
