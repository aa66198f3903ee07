-- Admin roles on API keys ('' = an ordinary key of the mesh) and key expiry (rotation overlap).
-- depends: 0003_audit-log
ALTER TABLE api_keys ADD COLUMN role TEXT NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN expires_at_us BIGINT;
