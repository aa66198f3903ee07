"""The policy's JSON Schema (llmesh/kit/policy.schema.json) says what the services' parsers take:
every policy document the services' own tests use is checked against it and against the
parsers (router routing, queues and quota, classifier, cache), so the schema and the code cannot drift apart unnoticed."""

from __future__ import annotations

import ast
import json
import pathlib

import pytest
from llmesh.cli.policy import document_errors, policy_errors
from llmesh.kit.policy import load_schema
from llmesh.services.cache.policy import parse_cache_policy
from llmesh.services.classifier.policy import ClassifierPolicy, parse_policy
from llmesh.services.router.accounting import quota_policy_from_document
from llmesh.services.router.queueing import DEFAULT_QUEUE_CLASSES, parse_queue_classes, queue_policy_from_document
from llmesh.services.router.routing import RoutingPolicy, policy_from_document
from structlog.testing import capture_logs

ROOT = pathlib.Path(__file__).resolve().parents[1]
PARSERS = {
    "parse_policy",
    "parse_cache_policy",
    "policy_from_document",
    "queue_policy_from_document",
    "quota_policy_from_document",
}
KEY_PREFIXES = ("global", "tenant.", "use_case.")


def _literal_text(node: ast.expr) -> str | None:
    """The text of a string literal, or the literal start of an f-string."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value)
    return None


def documents_in_service_tests() -> list[tuple[str, str, dict]]:
    """(where, how, document) of every literal policy document in services/*/tests: written to the
    KV bucket (a call whose arguments are a policy key and a dict) or given to a parser."""
    found = []
    for path in sorted(ROOT.glob("services/*/tests/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if name in PARSERS and isinstance(node.args[0], ast.Dict):
                found.append((where, "parsed", ast.literal_eval(node.args[0])))
            elif (
                len(node.args) == 2
                and isinstance(node.args[1], ast.Dict)
                and (_literal_text(node.args[0]) or "").startswith(KEY_PREFIXES)
            ):
                found.append((where, "stored", ast.literal_eval(node.args[1])))
    return found


DOCUMENTS = documents_in_service_tests()


def parser_warnings(document: dict) -> list[dict]:
    """What the services log while reading `document`: each ignored value is a warning."""
    with capture_logs() as logs:
        policy_from_document(document, RoutingPolicy({}, {}))
        queue_policy_from_document(document, parse_queue_classes(DEFAULT_QUEUE_CLASSES))
        parse_policy(document, ClassifierPolicy())
        parse_cache_policy(document)
        quota_policy_from_document(document)
    return [entry for entry in logs if entry["log_level"] == "warning"]


def test_the_service_tests_hold_policy_documents_of_every_section():
    sections = {section for _, _, doc in DOCUMENTS for section in doc}
    assert {"tiers", "prices", "cache", "classifier", "queues", "budgets", "rate_limits"} <= sections, sections
    assert any(how == "stored" for _, how, _ in DOCUMENTS)


@pytest.mark.parametrize("where, how, document", DOCUMENTS, ids=[w for w, _, _ in DOCUMENTS])
def test_the_schema_agrees_with_the_parsers(where, how, document):
    errors = document_errors("global", document)
    warnings = parser_warnings(document)
    if how == "stored":
        # A policy a service test writes to the bucket is one the services are meant to apply.
        assert errors == [], f"{where}: the schema refuses a policy the services apply: {errors}"
    if not errors:
        assert warnings == [], f"{where}: valid under the schema, yet a parser ignored part of it: {warnings}"
    elif not warnings:
        # The parsers silently skip a section of the wrong type; anything else they take, the schema takes.
        assert all("is not of type" in message for _, message in errors), (where, errors)
    if warnings:
        assert errors, f"{where}: a parser ignored part of it, yet the schema accepts it: {warnings}"


def test_the_example_policy_is_valid_and_names_every_key_form():
    example = json.loads((ROOT / "examples" / "policy.json").read_text())
    assert policy_errors(example) == []
    assert {key.split(".")[0] for key in example} == {"global", "tenant", "use_case"}
    for document in example.values():
        assert parser_warnings(document) == []


def test_the_schema_is_a_valid_draft_2020_12_schema():
    import jsonschema

    schema = load_schema()
    jsonschema.validators.validator_for(schema).check_schema(schema)
    assert schema["$schema"].endswith("/draft/2020-12/schema")
