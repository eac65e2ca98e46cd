-- Dashboard sessions, kept in the database so that they outlive a restart and are seen by every
-- node. A session is found by the SHA-256 of its cookie, never by the cookie itself.
CREATE TABLE dashboard_sessions (
    id_hash     TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    credential  TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX dashboard_sessions_by_owner ON dashboard_sessions (owner, expires_at);
CREATE INDEX dashboard_sessions_by_expiry ON dashboard_sessions (expires_at);

-- Messages waiting for a session's next view of a page, sealed by the dashboard with a key only
-- the session's cookie gives (a new API key or secret among them).
CREATE TABLE dashboard_flashes (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session     TEXT NOT NULL REFERENCES dashboard_sessions (id_hash) ON DELETE CASCADE,
    page        TEXT NOT NULL,
    sealed      TEXT NOT NULL
);
CREATE INDEX dashboard_flashes_by_session ON dashboard_flashes (session, page);
