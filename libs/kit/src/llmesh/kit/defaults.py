"""Defaults that several services share: their names, their well-known ports and the home folder
of a local mesh. The launcher and every service read them from here, never from each other."""

from __future__ import annotations

import os
import pathlib

SERVICES = ("tenancy", "classifier", "cache", "inference", "router", "edge")
DEFAULT_PORTS = {
    "router": 50051,
    "tenancy": 50052,
    "classifier": 50053,
    "cache": 50054,
    "inference": 50055,
    # The edge's gRPC port serves health and reflection only; its API is HTTP on EDGE_HTTP_PORT.
    "edge": 50056,
}
#: the edge's OpenAI-compatible HTTP API
EDGE_HTTP_PORT = 8080


def home() -> pathlib.Path:
    """LLMESH_HOME, default ~/.llmesh: state, logs, SQLite and embedded stores of a local mesh."""
    return pathlib.Path(os.environ.get("LLMESH_HOME") or pathlib.Path.home() / ".llmesh")
