-- An API key's role: 'manager' (everything of its organization) or 'producer' (posts events,
-- reads event types).
ALTER TABLE api_keys ADD COLUMN role TEXT NOT NULL DEFAULT 'manager';
