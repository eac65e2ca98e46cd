-- SQLite rebuilds deliveries and attempts as clustered tables in this step. PostgreSQL's heap
-- tables have no hidden rowid b-tree to save, so it has nothing to change.
SELECT 1;
