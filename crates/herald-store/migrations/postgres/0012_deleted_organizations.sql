-- Organizations deleted in the last day. A write on another node (an ingest, a new webhook)
-- that read the organization just before its deletion can commit after it, for an
-- organization that no longer exists; the store sweeps what such writes left
-- (`Store::sweep_deleted_orgs`), and forgets an organization a day after its deletion.
CREATE TABLE deleted_organizations (
    id          TEXT COLLATE "C" PRIMARY KEY,
    deleted_at  BIGINT NOT NULL
);
