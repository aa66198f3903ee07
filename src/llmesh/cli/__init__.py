"""The `llmesh` console script."""
