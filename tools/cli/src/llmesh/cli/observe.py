"""`llmesh prometheus targets`: the running local mesh's metrics endpoints as a Prometheus file_sd
document (deploy/prometheus/local/prometheus.yml reads it); `llmesh top` lives in llmesh.cli.top."""

from __future__ import annotations

import argparse
import json
import sys

from llmesh.launcher.state import load_state, service_of


def register(subparsers) -> None:
    prometheus = subparsers.add_parser("prometheus", help="Prometheus helpers for the local mesh")
    commands = prometheus.add_subparsers(dest="prometheus_command", required=True)
    targets = commands.add_parser(
        "targets", help="print the local mesh's /metrics endpoints as file_sd JSON (deploy/prometheus/local)"
    )
    targets.add_argument("--region", default="local", help="the region label of every target")
    targets.set_defaults(func=_targets)


def metrics_endpoints() -> dict[str, str]:
    """process -> host:port of its /metrics, from $LLMESH_HOME/mesh.json (empty without a mesh); a
    service's further replicas under their own names ("router-2", launcher/state.replica_name)."""
    state = load_state()
    if state is None:
        return {}
    found = {}
    for name, port in sorted(state.metrics_ports.items()):
        record = state.processes.get(name)
        address = record.address if record and record.address else state.endpoints.get(name, "")
        host = address.rsplit(":", 1)[0] if address and not address.startswith("ipv4:") else "127.0.0.1"
        found[name] = f"{host or '127.0.0.1'}:{port}"
    return found


def file_sd(endpoints: dict[str, str], region: str = "local") -> list[dict]:
    """One file_sd group per process, labelled as the Kubernetes scrape config labels its pods (the
    replicas of a service share its `service` label)."""
    return [
        {"targets": [address], "labels": {"service": service_of(name), "region": region}}
        for name, address in sorted(endpoints.items())
    ]


def _targets(args: argparse.Namespace) -> int:
    endpoints = metrics_endpoints()
    if not endpoints:
        print("llmesh prometheus: no running mesh found (start one with `llmesh up`)", file=sys.stderr)
        return 1
    print(json.dumps(file_sd(endpoints, args.region), indent=1))
    return 0
