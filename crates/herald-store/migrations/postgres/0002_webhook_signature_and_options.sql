-- A webhook may override its profile's signature scheme, and has profile-specific options.
ALTER TABLE webhooks ADD COLUMN signature TEXT;
ALTER TABLE webhooks ADD COLUMN options TEXT NOT NULL DEFAULT '{}';
