-- 1.3.0-broken-migration, step 2 of 2 (fails): indexes a column no migration created,
-- so the database is left at 0003.
CREATE INDEX notes_category_idx ON notes (category);
