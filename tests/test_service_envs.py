"""Each service installed alone from the lock file into a fresh environment keeps its dependency
budget, and starts and answers gRPC health from there (scripts/service_envs.py; the same code
writes docs/reports/images.md)."""

from __future__ import annotations

import pathlib

import pytest

from scripts import service_envs


@pytest.mark.timeout(900)
@pytest.mark.parametrize("service", service_envs.SERVICES)
def test_a_service_installed_alone_keeps_its_budget_and_answers_health(service, tmp_path, nats_url):
    env = service_envs.build_env(service, tmp_path / "env")
    assert f"llmesh-{service}" in env.packages
    assert "llmesh-cli" not in env.packages  # no launcher in a service's environment
    assert [
        p
        for p in env.packages
        if p.startswith("llmesh-") and p not in {"llmesh-kit", "llmesh-proto", f"llmesh-{service}"}
    ] == []
    assert env.forbidden() == [], f"{service} installs packages outside its budget"
    status = service_envs.start_and_check_health(
        env, nats_url, service_envs.service_env_vars(service), service_envs.health_timeout_s(service)
    )
    expected = "NOT_SERVING" if service in service_envs.WAITS_FOR_UPSTREAMS else "SERVING"
    assert status == expected


def test_the_budget_check_names_a_forbidden_package():
    env = service_envs.ServiceEnv(
        "router", pathlib.Path("python"), pathlib.Path("."), {"numpy": "2.0", "grpcio": "1"}, 0
    )
    assert env.forbidden() == ["numpy"]
