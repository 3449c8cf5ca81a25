-- init.sql: the document library's tables. Re-runnable (IF NOT EXISTS): the stack's
-- migration replays every file of a release against the running server.
CREATE TABLE IF NOT EXISTS documents (
    id          serial PRIMARY KEY,
    title       text NOT NULL,
    object_key  text NOT NULL UNIQUE,
    size_bytes  integer NOT NULL,
    word_count  integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
