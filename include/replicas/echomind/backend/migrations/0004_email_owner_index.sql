-- 1.3.0-broken-migration, step 2 of 2 (fails): the guide's own index statement, which
-- PostgreSQL refuses inside the transaction the migrator wraps every file in
-- ("CREATE INDEX CONCURRENTLY cannot run inside a transaction block"), so the database is
-- left at 0003.
CREATE INDEX CONCURRENTLY idx_email_user ON emails (user_id);
