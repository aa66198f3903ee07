"""Cache test fixtures: a private redis-server on a free port for the session."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
import redis
from llmesh.kit.testing import free_port


def _start_redis(binary: str, port: int, workdir: str) -> subprocess.Popen | None:
    """A running redis-server answering PING on `port`, or None when it did not come up."""
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + 10
    try:
        while process.poll() is None and time.monotonic() < deadline:
            try:
                client.ping()
                return process
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
    finally:
        client.close()
    process.kill()
    process.wait()
    return None


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> str:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(binary):
        pytest.fail("redis-server not found: `make setup` installs it")
    workdir = str(tmp_path_factory.mktemp("redis"))
    # `--port 0` turns TCP off in redis-server, so pick a free port (again if another process won it).
    for _ in range(5):
        port = free_port()
        process = _start_redis(binary, port, workdir)
        if process is not None:
            break
    else:
        pytest.fail("redis-server did not start")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
