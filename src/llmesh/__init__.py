"""llmesh: an enterprise LLM serving mesh."""
