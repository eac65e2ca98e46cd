-- Endpoint health: since when a webhook has only failed, and why Herald disabled it.
ALTER TABLE webhooks ADD COLUMN failing_since BIGINT;
ALTER TABLE webhooks ADD COLUMN disabled_reason TEXT;
