-- The NATS event id of audit entries appended from llmesh.audit.> (NULL for the others), so a
-- redelivered event is appended once.
-- depends: 0004_key-roles-expiry
ALTER TABLE audit_log ADD COLUMN event_id TEXT;
CREATE UNIQUE INDEX audit_log_event_id ON audit_log (event_id);
