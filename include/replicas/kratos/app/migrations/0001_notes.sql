-- 1.0.0: the notes the app writes (POST /v1/notes).
CREATE TABLE notes (
    id serial PRIMARY KEY,
    body text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO notes (body, created_at) VALUES
    ('welcome', '2026-01-01T00:00:00Z'),
    ('kratos replica', '2026-01-01T00:00:01Z');
