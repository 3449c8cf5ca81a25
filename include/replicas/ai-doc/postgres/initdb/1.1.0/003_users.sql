-- The users table and its first administrator.
CREATE TABLE IF NOT EXISTS users (
    id         serial PRIMARY KEY,
    username   text NOT NULL UNIQUE,
    role       text NOT NULL DEFAULT 'user',
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO users (username, role) VALUES ('admin', 'admin') ON CONFLICT (username) DO NOTHING;
