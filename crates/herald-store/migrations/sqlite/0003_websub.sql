-- WebSub verification of intent: whether a webhook verifies, and one row per webhook and channel.
ALTER TABLE webhooks ADD COLUMN verification TEXT NOT NULL DEFAULT 'none';

CREATE TABLE subscriptions (
    webhook_id       TEXT NOT NULL,
    channel          TEXT NOT NULL,
    org_id           TEXT NOT NULL,
    topic            TEXT NOT NULL,
    mode             TEXT NOT NULL,
    state            TEXT NOT NULL,
    reason           TEXT,
    lease_seconds    INTEGER NOT NULL,
    last_attempt_at  INTEGER,
    verified_at      INTEGER,
    expires_at       INTEGER,
    renew_at         INTEGER,
    PRIMARY KEY (webhook_id, channel)
);
CREATE INDEX subscriptions_by_org ON subscriptions (org_id);
CREATE INDEX subscriptions_to_renew ON subscriptions (renew_at) WHERE renew_at IS NOT NULL;
