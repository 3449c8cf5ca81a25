CREATE TABLE tenants (
    id serial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE knowledge_bases (
    id serial PRIMARY KEY,
    tenant_id integer NOT NULL REFERENCES tenants (id),
    name text NOT NULL,
    chunk_size integer NOT NULL DEFAULT 512
);
CREATE TABLE knowledges (
    id serial PRIMARY KEY,
    knowledge_base_id integer NOT NULL REFERENCES knowledge_bases (id),
    title text NOT NULL,
    object_key text NOT NULL,
    word_count integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX knowledges_title_trgm ON knowledges USING gin (title gin_trgm_ops);
INSERT INTO tenants (name) VALUES ('default');
INSERT INTO knowledge_bases (tenant_id, name) VALUES (1, 'default');
