"""CachedPolicy: a service's parser runs once per (tenant, use case) and policy revision."""

from __future__ import annotations

from llmesh.kit.policy import CachedPolicy


def test_parses_once_per_scope_and_revision_and_stays_bounded():
    docs = {"t1": {"limit": 1}}
    revision = [1]
    parsed = []

    def parse(doc):
        parsed.append(doc)
        return doc.get("limit", 0)

    policy = CachedPolicy(lambda tenant, use_case: docs.get(tenant, {}), lambda: revision[0], parse, max_entries=2)
    assert policy("t1", "a") == 1 and policy.get("t1", "a") == 1 and len(parsed) == 1
    docs["t1"] = {"limit": 2}
    assert policy("t1", "a") == 1, "same revision: the parsed policy is kept"
    assert policy("t1", "b") == 2 and len(parsed) == 2, "another use case is its own entry"
    revision[0] = 2
    assert policy("t1", "a") == 2 and len(parsed) == 3
    policy("t2", "a")
    policy("t3", "a")
    assert len(parsed) == 5 and policy("t1", "a") == 2 and len(parsed) == 6, "full: starts over"
