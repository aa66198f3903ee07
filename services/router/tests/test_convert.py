"""Request defaults and the router's configuration."""

from __future__ import annotations

import pytest
from llmesh.common.v1 import common_pb2
from llmesh.kit.config import ConfigError, load_settings
from llmesh.kit.vocabulary import FinishReason
from llmesh.router.v1 import router_pb2
from llmesh.services.router.convert import command_from_proto, event_to_proto
from llmesh.services.router.domain import CacheOutcome, Priority, Summary, Usage
from llmesh.services.router.settings import RouterSettings

USER = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")


def test_unset_fields_take_their_defaults():
    command = command_from_proto(router_pb2.GenerateRequest(messages=[USER]))
    assert command.max_tokens == 256 and command.use_case == "default" and command.pinned_model == ""
    # PRIORITY_UNSPECIFIED is the standard class (ADR 0013).
    assert command.priority is Priority.STANDARD and command.use_cache


def test_set_fields_are_kept():
    command = command_from_proto(
        router_pb2.GenerateRequest(
            messages=[USER],
            max_tokens=4096,
            use_case="support-bot.v2",
            priority=router_pb2.PRIORITY_BATCH,
            cache_policy=router_pb2.CACHE_POLICY_BYPASS,
            model="gemma-3-270m",
            sampling=common_pb2.SamplingParams(temperature=0, seed=7),
        )
    )
    assert command.max_tokens == 4096 and command.use_case == "support-bot.v2"
    assert command.priority is Priority.BATCH and not command.use_cache and command.pinned_model == "gemma-3-270m"
    assert command.sampling.temperature == 0 and command.sampling.seed == 7


def test_summary_to_proto():
    proto = event_to_proto(
        Summary("r1", 2, "m", "llama_cpp", CacheOutcome.SEMANTIC_HIT, Usage(3, 4), 0.0, 1.5, 2.5, FinishReason.LENGTH)
    )
    assert proto.summary.cache_outcome == router_pb2.CACHE_OUTCOME_SEMANTIC_HIT
    assert proto.summary.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert proto.summary.usage.completion_tokens == 4 and proto.summary.tier == common_pb2.TIER_2


def test_settings_defaults_and_validation():
    settings = load_settings(RouterSettings, environ={})
    assert settings.port == 50051 and settings.inference_addr == "127.0.0.1:50055"
    assert settings.principal_ttl_s == 30.0
    with pytest.raises(ConfigError) as exc:
        load_settings(
            RouterSettings,
            environ={
                "LLMESH_ROUTER_PRICES": '{"m": {"prompt_per_1k": "x"}}',
                "LLMESH_ROUTER_TIER_MODELS": "9=m",
                "LLMESH_ROUTER_FALLBACK_TIER": "0",
            },
        )
    text = str(exc.value)
    assert "LLMESH_ROUTER_PRICES" in text and "LLMESH_ROUTER_TIER_MODELS" in text
    assert "LLMESH_ROUTER_FALLBACK_TIER" in text
