-- 1.3.0-broken-migration, step 1 of 2 (applies): emails belong to a user; the existing
-- ones to the first user.
CREATE TABLE users (
    id serial PRIMARY KEY,
    email text NOT NULL UNIQUE
);
INSERT INTO users (email) VALUES ('owner@echomind.example');
ALTER TABLE emails ADD COLUMN user_id integer REFERENCES users (id);
UPDATE emails SET user_id = 1;
