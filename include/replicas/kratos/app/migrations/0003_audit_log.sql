-- 1.3.0-broken-migration, step 1 of 2 (applies): an audit log of note changes.
CREATE TABLE audit_log (
    id serial PRIMARY KEY,
    note_id integer NOT NULL REFERENCES notes (id),
    action text NOT NULL
);
INSERT INTO audit_log (note_id, action) SELECT id, 'imported' FROM notes;
