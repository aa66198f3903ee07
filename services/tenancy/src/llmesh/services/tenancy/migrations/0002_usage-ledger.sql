-- The usage ledger: one row per request, written once (request_id is the key).
-- depends: 0001_tenants-keys-outbox
CREATE TABLE usage_ledger (
    request_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    business_unit TEXT NOT NULL,
    use_case TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    tier TEXT NOT NULL,
    backend TEXT NOT NULL,
    region TEXT NOT NULL,
    cache_outcome TEXT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    cost_avoided_usd DOUBLE PRECISION NOT NULL,
    occurred_at_us BIGINT NOT NULL,
    recorded_at_us BIGINT NOT NULL
);
CREATE INDEX usage_ledger_by_tenant_time ON usage_ledger (tenant_id, occurred_at_us);
CREATE INDEX usage_ledger_by_time ON usage_ledger (occurred_at_us);
