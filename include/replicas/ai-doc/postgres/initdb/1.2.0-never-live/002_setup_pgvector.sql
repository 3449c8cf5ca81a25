-- setup_pgvector.sql. pgvector is not in Debian 12's archive, so the replica keeps the
-- embeddings in a real[] column where the guide's `vector` extension type would be.
CREATE TABLE IF NOT EXISTS document_embeddings (
    document_id integer PRIMARY KEY REFERENCES documents (id) ON DELETE CASCADE,
    embedding   real[] NOT NULL
);
