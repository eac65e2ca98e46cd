-- WebSub verification of intent: whether a webhook verifies, and one row per webhook and channel.
ALTER TABLE webhooks ADD COLUMN verification TEXT NOT NULL DEFAULT 'none';

CREATE TABLE subscriptions (
    webhook_id       TEXT COLLATE "C" NOT NULL,
    channel          TEXT COLLATE "C" NOT NULL,
    org_id           TEXT NOT NULL,
    topic            TEXT NOT NULL,
    mode             TEXT NOT NULL,
    state            TEXT NOT NULL,
    reason           TEXT,
    lease_seconds    BIGINT NOT NULL,
    last_attempt_at  BIGINT,
    verified_at      BIGINT,
    expires_at       BIGINT,
    renew_at         BIGINT,
    PRIMARY KEY (webhook_id, channel)
);
CREATE INDEX subscriptions_by_org ON subscriptions (org_id);
CREATE INDEX subscriptions_to_renew ON subscriptions (renew_at) WHERE renew_at IS NOT NULL;

-- Subscriptions are part of what every node caches (see 0001).
CREATE TRIGGER subscriptions_changed AFTER INSERT OR DELETE ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION herald_directory_changed();
CREATE TRIGGER subscriptions_updated AFTER UPDATE ON subscriptions
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION herald_directory_changed();
