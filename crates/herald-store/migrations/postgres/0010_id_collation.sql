-- Every column that names a row of another table sorts as "C", like the ids it names. 0001 gave
-- ids COLLATE "C" but left the columns naming them (deliveries.webhook_id, attempts.delivery_id,
-- every org_id...) in the database's collation. Compared with each other, two collations kept
-- PostgreSQL from the index on the naming side: the purge deleted each event's attempts by a scan
-- of all attempts (181 ms an event with half a million of them, so a retention pass could not
-- keep up). Changing a collation rebuilds the column's indexes, not the table; on a large
-- database this migration holds its tables for as long as that takes.

ALTER TABLE api_keys ALTER COLUMN org_id TYPE TEXT COLLATE "C";
ALTER TABLE event_types ALTER COLUMN org_id TYPE TEXT COLLATE "C";
ALTER TABLE webhooks ALTER COLUMN org_id TYPE TEXT COLLATE "C";
ALTER TABLE events ALTER COLUMN org_id TYPE TEXT COLLATE "C";
ALTER TABLE deliveries
    ALTER COLUMN org_id TYPE TEXT COLLATE "C",
    ALTER COLUMN webhook_id TYPE TEXT COLLATE "C",
    ALTER COLUMN event_id TYPE TEXT COLLATE "C";
ALTER TABLE attempts ALTER COLUMN delivery_id TYPE TEXT COLLATE "C";
ALTER TABLE subscriptions ALTER COLUMN org_id TYPE TEXT COLLATE "C";

-- A column's type change drops its statistics; without them (autovacuum off, or not yet run)
-- the planner guesses, and guessed wrong in the case above. Only tables with rows are analyzed:
-- statistics that say a table is empty (a new database) make every plan a scan until the next
-- analysis, where a table never analyzed is assumed to have some rows.
DO $$
DECLARE
    t TEXT;
    has_rows BOOLEAN;
BEGIN
    FOREACH t IN ARRAY ARRAY['api_keys', 'event_types', 'webhooks', 'events', 'deliveries',
                             'attempts', 'subscriptions'] LOOP
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I)', t) INTO has_rows;
        IF has_rows THEN
            EXECUTE format('ANALYZE %I', t);
        END IF;
    END LOOP;
END $$;
