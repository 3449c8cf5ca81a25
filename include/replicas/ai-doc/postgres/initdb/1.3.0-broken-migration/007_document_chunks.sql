-- 1.3.0: documents split into chunks for retrieval (applies).
CREATE TABLE IF NOT EXISTS document_chunks (
    document_id integer NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    position    integer NOT NULL,
    body        text NOT NULL,
    PRIMARY KEY (document_id, position)
);
