"""The service kit shared by every llmesh service: config, logging, metrics, errors, serving,
clients and the NATS bus. Nothing service-specific lives here."""
