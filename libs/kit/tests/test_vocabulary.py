"""The shared vocabulary: one enum per concept, converted from and to the protos in one place."""

from __future__ import annotations

import pytest
from llmesh.common.v1 import common_pb2
from llmesh.kit.auth import admin_token_check, bearer_token
from llmesh.kit.errors import InvalidArgument, Unauthenticated
from llmesh.kit.vocabulary import (
    DEFAULT_USE_CASE,
    FinishReason,
    Principal,
    Sensitivity,
    request_id_from,
    tenant_id_from,
    use_case_from,
)


def test_sensitivity_round_trips_every_proto_value_and_keeps_its_order():
    for name, number in common_pb2.Sensitivity.items():
        level = Sensitivity.from_proto(number)
        assert f"SENSITIVITY_{level.name}" == name and level.to_proto() == number
    assert Sensitivity.PUBLIC < Sensitivity.INTERNAL < Sensitivity.CONFIDENTIAL < Sensitivity.RESTRICTED


def test_an_unknown_sensitivity_is_invalid_or_the_callers_fallback():
    with pytest.raises(InvalidArgument, match="clearance 99") as bad:
        Sensitivity.from_proto(99, field="clearance")
    assert bad.value.field == "clearance"
    assert Sensitivity.from_proto(99, unknown=Sensitivity.RESTRICTED) is Sensitivity.RESTRICTED


def test_sensitivity_names_parse_but_unspecified_is_not_a_level():
    assert Sensitivity.parse(" Confidential ") is Sensitivity.CONFIDENTIAL
    for name in ("unspecified", "secret", ""):
        with pytest.raises(ValueError, match="unknown sensitivity"):
            Sensitivity.parse(name)


def test_finish_reason_round_trips_and_only_stop_and_length_are_complete():
    for name, number in common_pb2.FinishReason.items():
        reason = FinishReason.from_proto(number)
        assert f"FINISH_REASON_{reason.name}" == name and reason.to_proto() == number
    assert FinishReason.from_proto(42) is FinishReason.UNSPECIFIED
    assert {r for r in FinishReason if r.complete} == {FinishReason.STOP, FinishReason.LENGTH}


def test_names_and_ids_callers_send():
    assert use_case_from("") == DEFAULT_USE_CASE and use_case_from("support-bot.v2") == "support-bot.v2"
    for bad in ("has space", "x" * 65, "a/b"):
        with pytest.raises(InvalidArgument, match="use_case"):
            use_case_from(bad)
    assert tenant_id_from("t_1-a") == "t_1-a"
    for bad in ("", "a.b", "x" * 65):
        with pytest.raises(InvalidArgument, match="key.tenant_id"):
            tenant_id_from(bad, "key.tenant_id")
    assert request_id_from("") == "" and request_id_from("r" * 128) == "r" * 128
    with pytest.raises(InvalidArgument, match="request_id is required"):
        request_id_from("", required=True)
    for bad in ("r" * 129, "line\nbreak"):
        with pytest.raises(InvalidArgument, match="at most 128 printable"):
            request_id_from(bad)


def test_bearer_token_parsing():
    assert bearer_token("Bearer sk-1") == "sk-1"
    assert bearer_token("  bearer   sk-1 ") == "sk-1"
    for header, needle in (
        (None, "missing credentials"),
        ("Basic abc", "malformed authorization"),
        ("Bearer a b", "malformed API key"),
        ("Bearer " + "k" * 513, "malformed API key"),
    ):
        with pytest.raises(Unauthenticated, match=needle):
            bearer_token(header)
    with pytest.raises(Unauthenticated, match="missing admin token: .*Bearer <admin token>"):
        bearer_token("", credential="admin token", missing="admin token")


def test_admin_token_setting_check():
    assert admin_token_check("") is None and admin_token_check("a" * 16) is None
    assert "at least 16" in admin_token_check("short")
    assert "without spaces" in admin_token_check("an admin token with spaces")


def test_principal_round_trips_and_an_unknown_clearance_is_none():
    principal = Principal("t_1", "acme", "research", Sensitivity.CONFIDENTIAL, "k_1")
    assert Principal.from_proto(principal.to_proto()) == principal
    newer = common_pb2.Principal(tenant_id="t_1", clearance=9)
    assert Principal.from_proto(newer).clearance is Sensitivity.UNSPECIFIED
