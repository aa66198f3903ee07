"""Starts the whole mesh on one machine (`llmesh up`)."""
