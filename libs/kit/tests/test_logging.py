"""Library logs (grpc, nats, asyncio) come out as the same JSON lines as the service's own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(30)

SCRIPT = """
import asyncio, logging
from llmesh.kit.logging import bind_contextvars, configure_logging, get_logger
configure_logging("toy")
bind_contextvars(request_id="r1")
get_logger("llmesh.toy").info("own_event", answer=42)
logging.getLogger("nats.aio.client").warning("reconnecting to %s", "nats://x")
logging.getLogger("grpc._cython.cygrpc").debug("hidden below info")
try:
    raise ValueError("boom")
except ValueError:
    logging.getLogger("asyncio").exception("Task exception was never retrieved")
"""


def test_library_logs_are_json_with_the_bound_context():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert [line["event"] for line in lines] == [
        "own_event",
        "reconnecting to nats://x",
        "Task exception was never retrieved",
    ], done.stderr
    own, nats, crashed = lines
    assert own["answer"] == 42 and own["service"] == "toy" and own["request_id"] == "r1"
    assert nats["logger"] == "nats.aio.client" and nats["level"] == "warning"
    assert nats["service"] == "toy" and nats["request_id"] == "r1" and "timestamp" in nats
    assert crashed["logger"] == "asyncio" and crashed["level"] == "error"
    assert "ValueError: boom" in crashed["exception"]
