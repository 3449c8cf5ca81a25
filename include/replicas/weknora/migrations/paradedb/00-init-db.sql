-- First start of an empty volume only (docker-entrypoint-initdb.d), as the guide's
-- 00-init-db.sql: the extensions the schema uses. ParadeDB's pg_search is not in Debian's
-- PostgreSQL; pg_trgm (contrib) backs the replica's title search instead.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE EXTENSION IF NOT EXISTS "uuid-ossp";
