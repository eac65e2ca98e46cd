-- A webhook may limit how many requests per second Herald sends it.
ALTER TABLE webhooks ADD COLUMN rate_limit_per_second BIGINT;
