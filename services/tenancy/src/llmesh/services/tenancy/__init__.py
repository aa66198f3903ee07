"""The tenancy service: tenants, API keys (stored hashed, shown once) and authentication."""
