"""`llmesh models` against the inference service's in-process host (the real local model)."""

from __future__ import annotations

import asyncio

import pytest
from llmesh.cli.main import main

from services.inference.tests.conftest import inference  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(60)


async def test_models_prints_the_catalog_with_live_load(inference, capsys):  # noqa: F811
    code = await asyncio.to_thread(main, ["models", "--addr", inference.host.address])
    out = capsys.readouterr().out
    assert code == 0
    # (the in-process services' logs share stdout here)
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("model "))
    row = lines[lines.index(header) + 1]
    assert header.split()[:4] == ["model", "backend", "tiers", "region"]
    assert row.split()[:6] == ["gemma-3-270m", "llama_cpp", "1,2,3", "local", "self-hosted", "restricted"]
    assert "(0%)" in row or "(50%)" in row or "(100%)" in row
    assert row.rstrip().endswith("fallback")


def test_an_unreachable_service_is_one_line(capsys):
    assert main(["models", "--addr", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("llmesh: UNAVAILABLE") and err.count("\n") == 1
