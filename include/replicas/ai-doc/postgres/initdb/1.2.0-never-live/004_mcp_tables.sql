-- MCP (Model Context Protocol) API keys.
CREATE TABLE IF NOT EXISTS mcp_api_keys (
    id         serial PRIMARY KEY,
    user_id    integer NOT NULL REFERENCES users (id),
    key_hash   text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
