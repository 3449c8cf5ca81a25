CREATE TABLE tags (
    name text PRIMARY KEY,
    color text NOT NULL
);
INSERT INTO tags (name, color) VALUES ('untagged', 'grey'), ('manual', 'blue'), ('faq', 'green');
ALTER TABLE knowledges ADD COLUMN tag text REFERENCES tags (name);
UPDATE knowledges SET tag = 'untagged' WHERE tag IS NULL;
ALTER TABLE knowledges ALTER COLUMN tag SET NOT NULL;
