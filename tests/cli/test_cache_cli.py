"""`llmesh cache ...` against a hosted cache service (tenant names resolved by a GetTenant-only
tenancy stand-in: the tenancy service is another team's and is tested on its own)."""

from __future__ import annotations

import asyncio
import json
import pathlib
import re

import grpc
import pytest
from llmesh.cache.v1 import cache_pb2
from llmesh.cli.main import main
from llmesh.kit.config import ServerSettings, load_settings
from llmesh.kit.errors import NotFound
from llmesh.kit.server import ServiceApp
from llmesh.kit.testing import assert_eventually, hosted, unique
from llmesh.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc

from services.cache.tests.builders import lookup, store
from services.cache.tests.hosting import ADMIN_TOKEN, cache_service

pytestmark = pytest.mark.timeout(60)


class _Tenants(tenancy_pb2_grpc.TenancyServiceServicer):
    def __init__(self, ids: dict[str, str]):
        self.ids = ids

    async def GetTenant(self, request, context):
        if dict(context.invocation_metadata()).get("authorization") != f"Bearer {ADMIN_TOKEN}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "admin token required")
        if request.name not in self.ids:
            raise NotFound(f"no tenant named {request.name!r}")
        return tenancy_pb2.GetTenantResponse(
            tenant=tenancy_pb2.Tenant(tenant_id=self.ids[request.name], name=request.name)
        )


class _TenancyApp(ServiceApp):
    name = "tenancy-stand-in"

    def __init__(self, ids):
        self.ids = ids

    def register(self, server):
        tenancy_pb2_grpc.add_TenancyServiceServicer_to_server(_Tenants(self.ids), server)
        return ["llmesh.tenancy.v1.TenancyService"]


@pytest.fixture
async def mesh(nats_url, monkeypatch):
    tenant_id = unique("acme")
    tenancy_app = _TenancyApp({"acme": tenant_id})
    async with (
        cache_service(nats_url) as (_, stub, address),
        hosted(tenancy_app, load_settings(ServerSettings, environ={}, port=0, metrics_port=0)) as tenancy,
    ):
        monkeypatch.setenv("LLMESH_CACHE_ADDR", address)
        monkeypatch.setenv("LLMESH_TENANCY_ADDR", tenancy.address)
        monkeypatch.setenv("LLMESH_ADMIN_TOKEN", ADMIN_TOKEN)
        yield stub, tenant_id


async def cli(*argv: str) -> int:
    # The CLI runs its own event loop: give it a thread, as a shell would give it a process.
    return await asyncio.to_thread(main, list(argv))


async def _miss(stub, request) -> bool:
    return (await stub.Lookup(request)).outcome == cache_pb2.LOOKUP_OUTCOME_MISS


async def test_invalidate_resolves_the_tenant_name_and_prints_the_event_id(mesh, capsys):
    stub, tenant_id = mesh
    await stub.Store(store(tenant_id, "q", "a", key_kw={"use_case": "faq"}))
    await stub.Store(store(tenant_id, "q", "a"))
    assert await cli("cache", "invalidate", "--tenant", "acme", "--use-case", "faq") == 0
    # The hosted service logs to the same stdout here, interleaved with the CLI's own line.
    printed = capsys.readouterr().out.splitlines()
    event_ids = [line for line in printed if re.fullmatch(r"[0-9a-f]{32}", line)]
    assert len(event_ids) == 1, printed
    await assert_eventually(lambda: _miss(stub, lookup(tenant_id, "q", key_kw={"use_case": "faq"})))
    assert not await _miss(stub, lookup(tenant_id, "q"))

    assert await cli("cache", "invalidate", "--tenant", "acme", "--document", "d") == 2
    assert "--document and --version go together" in capsys.readouterr().err
    assert await cli("cache", "invalidate", "--tenant", "nobody") == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert await cli("cache", "invalidate", "--tenant-id", tenant_id) == 0
    await assert_eventually(lambda: _miss(stub, lookup(tenant_id, "q")))


async def test_warm_from_jsonl_then_stats(mesh, capsys, tmp_path):
    stub, tenant_id = mesh
    pairs = tmp_path / "pairs.jsonl"
    lines = [
        {
            "tenant": "acme",
            "prompt": f"question {i}",
            "answer": f"answer {i}",
            "tier": 2,
            "usage": {"prompt_tokens": 5, "completion_tokens": 10},
            "cost_usd": 0.01,
        }
        for i in range(40)
    ]
    lines.append(
        {
            "tenant": "acme",
            "use_case": "faq",
            "system": "Be brief.",
            "prompt": "hours?",
            "answer": "9-5",
            "content_class": "faq",
            "content_versions": {"hours-page": 3},
        }
    )
    lines.append({"tenant": "acme", "prompt": "empty", "answer": ""})
    pairs.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    assert await cli("cache", "warm", str(pairs), "--use-case", "support") == 0
    captured = capsys.readouterr()
    assert "stored 41, skipped 0, failed 1 of 42 pairs" in captured.out
    assert "warming" in captured.err and "pair 42: content is empty" in captured.err
    hit = await stub.Lookup(lookup(tenant_id, "hours?", key_kw={"use_case": "faq", "system_prompt": "Be brief."}))
    assert hit.answer.content == "9-5" and hit.answer.content_versions[0].version == 3

    await stub.Lookup(lookup(tenant_id, "question 1", business_unit="retail"))
    await stub.Lookup(lookup(tenant_id, "question 99", business_unit="retail"))
    assert await cli("cache", "stats", "--tenant", "acme") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["TENANT", "BU", "USE_CASE", "LOOKUPS"]
    row = next(line.split() for line in table if "retail" in line)
    assert row[:6] == [tenant_id, "retail", "support", "2", "50.0", "50.0"] and row[-2] == "15"
    assert table[-1].startswith("TOTAL")
    assert await cli("cache", "stats", "--tenant-id", tenant_id, "--json") == 0
    assert json.loads(capsys.readouterr().out)["total"]["tokensSaved"] == "15"


async def test_warm_reports_a_bad_line_before_sending_anything(mesh, capsys, tmp_path):
    stub, tenant_id = mesh
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"tenant": "acme", "prompt": "fine", "answer": "ok"}) + "\n{not json\n")
    assert await cli("cache", "warm", str(pairs)) == 2
    assert f"{pairs}:2: not JSON" in capsys.readouterr().err
    assert await _miss(stub, lookup(tenant_id, "fine"))
    assert await cli("cache", "warm", str(tmp_path / "missing.jsonl")) == 2


async def test_pin_unpin_delete(mesh, capsys):
    stub, tenant_id = mesh
    entry_id = (await stub.Store(store(tenant_id, "q", "a"))).entry_id
    assert await cli("cache", "pin", "--tenant", "acme", entry_id) == 0
    assert "pinned  expires never" in capsys.readouterr().out
    assert (await stub.Lookup(lookup(tenant_id, "q"))).answer.pinned
    assert await cli("cache", "unpin", "--tenant", "acme", entry_id) == 0
    assert "unpinned" in capsys.readouterr().out
    assert await cli("cache", "delete", "--tenant", "acme", entry_id) == 0
    assert "deleted" in capsys.readouterr().out
    assert await _miss(stub, lookup(tenant_id, "q"))
    assert await cli("cache", "delete", "--tenant", "acme", "not-an-id") == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err


async def test_the_example_warm_file_of_the_readme_loads_and_answers(mesh, capsys):
    """examples/cache_warm.jsonl, as the README runs it: `llmesh cache warm examples/cache_warm.jsonl`."""
    stub, tenant_id = mesh
    example = pathlib.Path(__file__).resolve().parents[2] / "examples" / "cache_warm.jsonl"
    lines = [json.loads(line) for line in example.read_text().splitlines() if line.strip()]
    assert await cli("cache", "warm", str(example)) == 0
    captured = capsys.readouterr()
    assert f"stored {len(lines)}, skipped 0, failed 0 of {len(lines)} pairs" in captured.out, captured.err

    # Warmed as `llmesh chat` asks (use case default, the router's default max_tokens): an exact hit.
    hit = await stub.Lookup(
        lookup(tenant_id, "What is the capital of France?", key_kw={"use_case": "default", "max_tokens": 256})
    )
    assert hit.outcome == cache_pb2.LOOKUP_OUTCOME_EXACT_HIT and hit.answer.content == "The capital of France is Paris."
    faq = lookup(
        tenant_id,
        "What are your opening hours?",
        key_kw={"system_prompt": "You are the support assistant of Acme. Answer briefly.", "max_tokens": 256},
    )
    answer = (await stub.Lookup(faq)).answer
    assert answer.content_class == "faq" and answer.content_versions[0].document_id == "opening-hours"
