-- 1.0.0: the emails the backend stores (POST /api/v1/emails).
CREATE TABLE emails (
    id serial PRIMARY KEY,
    sender text NOT NULL,
    subject text NOT NULL,
    body text NOT NULL DEFAULT '',
    received_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO emails (sender, subject, body, received_at) VALUES
    ('welcome@echomind.example', 'Welcome to EchoMind', 'Your assistant is ready.',
     '2026-01-01T00:00:00Z');
