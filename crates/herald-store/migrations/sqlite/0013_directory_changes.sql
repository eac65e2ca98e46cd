-- PostgreSQL records every change to an organization's configuration, for ingest on nodes that
-- share the database and hear of another's change a moment late. One process owns a SQLite
-- file, and its own changes leave its cache before they are answered: it needs no table (this
-- number keeps both backends' sequences the same).
SELECT 1;
