"""`llmesh policy get/set/validate/delete` against the session's real nats-server, each test on a
bucket of its own; what the CLI writes is read back by the kit's PolicyStore, as the services read it."""

from __future__ import annotations

import asyncio
import json
import pathlib

import pytest
from llmesh.cli.main import main
from llmesh.cli.policy import document_errors
from llmesh.kit.bus import Bus
from llmesh.kit.policy import PolicyStore
from llmesh.kit.testing import assert_eventually, free_port, unique
from llmesh.services.cache.policy import parse_cache_policy
from llmesh.services.classifier.policy import ClassifierPolicy, parse_policy
from llmesh.services.classifier.tiers import TierThresholds
from llmesh.services.router.routing import RoutingPolicy, policy_from_document

pytestmark = pytest.mark.timeout(60)

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "policy.json"
TENANT = "t_0123456789abcdef"  # the tenant of examples/policy.json


async def cli(capsys, *argv: str) -> tuple[int, str, str]:
    # The CLI runs its own event loop: it gets a thread, as a shell would give it a process.
    code = await asyncio.to_thread(main, ["policy", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
async def bucket(nats_url, monkeypatch):
    monkeypatch.setenv("LLMESH_NATS_URL", nats_url)
    name = unique("policy")
    yield name
    bus = await Bus.connect(nats_url, "test-policy-cleanup")
    try:
        await bus.js.delete_key_value(name)
    finally:
        await bus.close()


@pytest.fixture
async def store(nats_url, bucket):
    """The policy as a service sees it."""
    bus = await Bus.connect(nats_url, "test-policy-reader")
    store = PolicyStore(bus, bucket=bucket)
    await store.start()
    yield store
    await store.stop()
    await bus.close()


async def test_the_example_policy_round_trips_and_the_services_read_it(capsys, bucket, store):
    code, out, err = await cli(capsys, "set", str(EXAMPLE), "--bucket", bucket)
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()] == [
        "global",
        f"tenant.{TENANT}",
        f"use_case.{TENANT}.legal",
    ]
    code, out, err = await cli(capsys, "get", "--bucket", bucket)
    assert code == 0, err
    assert json.loads(out) == json.loads(EXAMPLE.read_text())

    await assert_eventually(lambda: store.documents() == json.loads(EXAMPLE.read_text()))
    legal = store.resolve(TENANT, "legal")
    assert parse_policy(legal, ClassifierPolicy()).thresholds == TierThresholds(0.2, 0.5)
    assert parse_policy(legal, ClassifierPolicy()).sensitivity.terms == ("Project Falcon", "Globex")
    cache = parse_cache_policy(legal)
    assert cache.semantic is False and cache.ttl_by_class == {"faq": 86400.0, "finance": 900.0}
    assert policy_from_document(legal, RoutingPolicy({}, {})).tier_models[3] == "gemma-3-270m"
    assert parse_cache_policy(store.resolve(TENANT, "default")).semantic is True

    code, out, _ = await cli(capsys, "get", "--bucket", bucket, "--key", f"use_case.{TENANT}.legal")
    assert code == 0 and json.loads(out) == {
        "classifier": {"tier_thresholds": [0.2, 0.5]},
        "cache": {"semantic": False},
    }

    code, out, _ = await cli(capsys, "delete", f"use_case.{TENANT}.legal", "--bucket", bucket)
    assert code == 0 and "deleted" in out
    await assert_eventually(lambda: f"use_case.{TENANT}.legal" not in store.documents())
    code, _, err = await cli(capsys, "get", "--bucket", bucket, "--key", f"use_case.{TENANT}.legal")
    assert code == 1 and f"no document under 'use_case.{TENANT}.legal'" in err


async def test_one_document_is_set_under_its_key(capsys, bucket, store, tmp_path):
    document = tmp_path / "tenant.json"
    document.write_text(json.dumps({"cache": {"allow_restricted": True}}))
    code, out, err = await cli(capsys, "set", str(document), "--key", "tenant.t_1", "--bucket", bucket)
    assert code == 0 and out.startswith("tenant.t_1  revision "), err
    await assert_eventually(lambda: store.get("tenant.t_1") == {"cache": {"allow_restricted": True}})


async def test_an_invalid_policy_is_refused_with_the_path_of_each_error_and_nothing_is_written(
    capsys, bucket, store, tmp_path
):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "global": {"tiers": {"1": "gemma-3-270m"}, "cache": {"ttl_by_class": {"faq": -5}}},
                f"tenant.{TENANT}": {"classifier": {"tier_thresholds": [0.9, 0.1], "default_sensitivity": "secret"}},
                "tenant.acme corp": {},
            }
        )
    )
    code, out, err = await cli(capsys, "set", str(bad), "--bucket", bucket)
    assert code == 1 and out == ""
    assert f"{bad} is invalid, nothing written" in err
    assert "$.global.cache.ttl_by_class.faq: -5 is less than or equal to the minimum of 0" in err
    assert f"$['tenant.{TENANT}'].classifier.tier_thresholds: low must not be above high" in err
    assert f"$['tenant.{TENANT}'].classifier.default_sensitivity: 'secret' is not one of" in err
    assert "$['tenant.acme corp']: unknown key" in err
    assert "Traceback" not in err
    code, out, _ = await cli(capsys, "get", "--bucket", bucket)
    assert code == 0 and json.loads(out) == {}, "not even the valid keys were written"
    assert store.documents() == {}

    code, _, err = await cli(capsys, "validate", str(bad))
    assert code == 1 and "$.global.cache.ttl_by_class.faq" in err and "nothing written" not in err


async def test_validate_needs_no_nats_and_reports_bad_files_in_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMESH_NATS_URL", f"nats://127.0.0.1:{free_port()}")
    code, out, err = await cli(capsys, "validate", str(EXAMPLE))
    assert code == 0 and "valid (global, tenant." in out, err

    one = tmp_path / "one.json"
    one.write_text(json.dumps({"classifier": {"tier_thresholds": "0.2,0.6"}, "tier": {}}))
    code, _, err = await cli(capsys, "validate", str(one), "--key", "use_case.t_1.faq")
    assert code == 1 and "$.tier: unknown field (known: " in err and "cache, classifier, " in err and ", tiers)" in err
    code, _, err = await cli(capsys, "validate", str(one), "--key", "tenants.t_1")
    assert code == 1 and "'tenants.t_1' is not a policy key" in err

    (tmp_path / "broken.json").write_text("{")
    code, _, err = await cli(capsys, "validate", str(tmp_path / "broken.json"))
    assert code == 2 and err.startswith("llmesh policy: ") and "not JSON" in err and err.count("\n") == 1
    code, _, err = await cli(capsys, "validate", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read" in err


async def test_an_unreachable_nats_is_one_line_not_a_hang(capsys, monkeypatch):
    url = f"nats://127.0.0.1:{free_port()}"
    monkeypatch.setenv("LLMESH_NATS_URL", url)
    code, _, err = await cli(capsys, "get")
    assert code == 1 and f"cannot reach NATS at {url}" in err and err.count("\n") == 1
    code, _, err = await cli(capsys, "set", str(EXAMPLE), "--nats", url)
    assert code == 1 and "cannot reach NATS" in err


def test_validate_refuses_an_overflow_that_resumes_above_its_threshold():
    errors = document_errors("global", {"overflow": {"threshold": 0.7, "resume_below": 0.9}})
    assert errors == [("$.overflow.resume_below", "resume_below must not be above threshold (got 0.9, 0.7)")]
    assert document_errors("global", {"overflow": {"threshold": 0.9, "resume_below": 0.7}}) == []
