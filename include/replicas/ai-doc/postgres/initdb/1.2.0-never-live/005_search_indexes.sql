-- Search indexes.
CREATE INDEX IF NOT EXISTS documents_title_lower ON documents (lower(title));
CREATE INDEX IF NOT EXISTS documents_created_at ON documents (created_at);
