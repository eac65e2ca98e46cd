-- PostgreSQL keeps the organizations deleted in the last day, for its nodes' writes that race
-- a deletion (`Store::sweep_deleted_orgs`). SQLite has one writer, which refuses a write
-- queued behind the deletion of its organization: it needs no table (this number keeps both
-- backends' sequences the same).
SELECT 1;
