-- The hash-chained audit log and its signed checkpoints (audit.py).
-- depends: 0002_usage-ledger
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    at_us BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    target TEXT NOT NULL,
    detail_json TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL
);
CREATE INDEX audit_log_by_tenant ON audit_log (tenant_id, seq);
CREATE TABLE audit_checkpoints (
    seq BIGINT PRIMARY KEY,
    entry_hash TEXT NOT NULL,
    signed_at_us BIGINT NOT NULL,
    signature TEXT NOT NULL
);
