-- Tenants, API keys and the event outbox. IF NOT EXISTS: databases written before yoyo managed
-- the schema already have these tables.
CREATE TABLE IF NOT EXISTS tenants (
    tenant_id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    business_unit TEXT NOT NULL,
    clearance TEXT NOT NULL,
    created_at_us BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (tenant_id),
    label TEXT NOT NULL,
    salt_hex TEXT NOT NULL,
    hash_hex TEXT NOT NULL,
    created_at_us BIGINT NOT NULL,
    revoked_at_us BIGINT
);
CREATE INDEX IF NOT EXISTS api_keys_by_tenant ON api_keys (tenant_id);
CREATE TABLE IF NOT EXISTS outbox (
    event_id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload_hex TEXT NOT NULL,
    created_at_us BIGINT NOT NULL,
    published_at_us BIGINT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (published_at_us, created_at_us);
