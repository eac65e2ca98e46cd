-- SQLite's deliveries name their event by a sequence number from this migration on; PostgreSQL
-- keeps its schema (this number keeps both backends' sequences the same).
SELECT 1;
