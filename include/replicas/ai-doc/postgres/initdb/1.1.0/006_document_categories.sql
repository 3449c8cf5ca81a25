-- 1.1.0: document categories. New table, a new NOT NULL column on documents, and the
-- existing documents backfilled as 'uncategorized' (re-runnable: only NULLs are set).
CREATE TABLE IF NOT EXISTS categories (
    name        text PRIMARY KEY,
    description text NOT NULL
);
INSERT INTO categories (name, description) VALUES
    ('uncategorized', 'documents written before categories existed'),
    ('guide', 'operations and deployment guides'),
    ('api', 'API references')
ON CONFLICT (name) DO NOTHING;
ALTER TABLE documents ADD COLUMN IF NOT EXISTS category text;
UPDATE documents SET category = 'uncategorized' WHERE category IS NULL;
ALTER TABLE documents ALTER COLUMN category SET DEFAULT 'uncategorized';
ALTER TABLE documents ALTER COLUMN category SET NOT NULL;
