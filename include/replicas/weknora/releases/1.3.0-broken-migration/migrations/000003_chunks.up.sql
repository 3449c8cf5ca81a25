CREATE TABLE chunks (
    id serial PRIMARY KEY,
    knowledge_id integer NOT NULL REFERENCES knowledges (id),
    seq integer NOT NULL,
    content text NOT NULL
);
