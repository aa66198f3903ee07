"""The edge: the OpenAI-compatible HTTP API (`/v1/chat/completions`, `/v1/models`) translated to the
router's gRPC API, with no policy of its own."""
