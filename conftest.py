"""Session fixtures of every test folder (tests/, libs/*/tests, services/*/tests): a real
nats-server and a real redis-server on free ports, torn down after the run, and the dev data sets beside the checkout (only for tests that measure quality on them)."""

from __future__ import annotations

import os
import pathlib

import pytest
from llmesh.kit import identity
from llmesh.kit.nats_server import NatsServerProcess
from llmesh.kit.testing import ensure_identity, redis_server

# LLMESH_SHARED_DATA points elsewhere (a missing folder runs the suite as on a clean clone).
SHARED_DATA = pathlib.Path(
    os.environ.get("LLMESH_SHARED_DATA") or pathlib.Path(__file__).resolve().parent.parent / "shared" / "data"
)


@pytest.fixture(scope="session", autouse=True)
def mesh_identity_dir(tmp_path_factory) -> pathlib.Path:
    """The session's own mesh keys and credentials (docs/adr/0023). Tests call as the operator,
    and services hosted in this process without identity files of their own verify with these
    keys; fixtures that want each service to be itself pass it its own credential file."""
    identity.set_default(None)
    # Tenancy hosted without a key file of its own signs tenant tokens with the session's key.
    directory = ensure_identity()
    yield directory
    identity.set_default(None)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory) -> NatsServerProcess:
    server = NatsServerProcess(str(tmp_path_factory.mktemp("nats")))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server) -> str:
    return nats_server.url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> str:
    with redis_server(str(tmp_path_factory.mktemp("redis"))) as url:
        yield url


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"dev data sets not found at {SHARED_DATA} (the shared/ folder beside the checkout)")
    return SHARED_DATA


def pytest_configure(config):
    # Five services share two cores: no library may spin on both (see docs/adr/0003).
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
