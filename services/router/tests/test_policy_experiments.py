"""Policy experiments in the router: each request runs under the variant the kit's stable hash
gives it (tier models here), and its summary names the variant."""

from __future__ import annotations

import pytest
from llmesh.kit.experiments import resolve_variant
from llmesh.kit.testing import assert_eventually, unique
from llmesh.router.v1 import router_pb2
from prometheus_client import REGISTRY

pytestmark = pytest.mark.timeout(60)


async def test_a_variant_maps_tiers_and_names_itself_in_the_summary(client, router_host):
    api_key, tenant, _ = client.new_key()
    doc = {
        "experiments": {
            "tier2-cloud": {
                "variants": {
                    "cloud": {"share": 0.5, "policy": {"tiers": {"2": "cloud-x"}}},
                    "home": {"share": 0.25, "policy": {}},
                }
            }
        }
    }
    await router_host.app.policy.put(f"tenant.{tenant}", doc)

    async def applies():
        request_id = unique("req")
        _, summary = await client.generate(
            api_key, "route me [tier:2]", request_id=request_id, cache_policy=router_pb2.CACHE_POLICY_BYPASS
        )
        assert summary.policy_variant == resolve_variant(doc, tenant, request_id)[1]
        assert summary.policy_variant

    await assert_eventually(applies, message="the experiment applies")
    seen = {}
    for _ in range(24):
        request_id = unique("req")
        _, summary = await client.generate(
            api_key, "route me [tier:2]", request_id=request_id, cache_policy=router_pb2.CACHE_POLICY_BYPASS
        )
        assert summary.policy_variant == resolve_variant(doc, tenant, request_id)[1]
        seen.setdefault(summary.policy_variant, set()).add(summary.model)
    assert seen["tier2-cloud/cloud"] == {"cloud-x"}
    assert "cloud-x" not in seen.get("tier2-cloud/home", set()) | seen.get("", set())
    assert REGISTRY.get_sample_value(
        "llmesh_router_policy_variant_requests_total", {"policy_variant": "tier2-cloud/cloud"}
    )
