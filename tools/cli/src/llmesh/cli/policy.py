"""`llmesh policy ...`: read, validate and write the routing and cache policy, the JSON documents
of the NATS KV bucket `llmesh-policy` that the router, classifier and cache watch.

A policy FILE is the whole bucket as one JSON object, key to document:

    {"global": {...}, "tenant.<tenant_id>": {...}, "use_case.<tenant_id>.<use_case>": {...}}

or, with --key, the one document stored under that key. Both are checked against the JSON Schema
in llmesh.kit (policy.schema.json, explained in docs/policy.md) before anything is written."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import sys
from typing import Any

from llmesh.kit.config import ServerSettings
from llmesh.kit.policy import POLICY_BUCKET, POLICY_HISTORY, load_schema
from llmesh.launcher.state import load_state

DEFAULT_NATS_URL = next(f.default for f in dataclasses.fields(ServerSettings) if f.name == "nats_url")
KEY_FORMS = "global, tenant.<tenant_id> or use_case.<tenant_id>.<use_case>"
_PLAIN_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class PolicyError(Exception):
    """A bad file, key or document, or an unreachable NATS: reported in one line."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def register(subparsers) -> None:
    policy = subparsers.add_parser(
        "policy",
        help="read, validate and write the routing/cache policy (NATS KV bucket llmesh-policy)",
        description="The policy is a set of JSON documents in the NATS KV bucket llmesh-policy: `global`, "
        "`tenant.<tenant_id>` and `use_case.<tenant_id>.<use_case>`, merged in that order. "
        "Its format: docs/policy.md (JSON Schema: llmesh/kit/policy.schema.json).",
    )
    commands = policy.add_subparsers(dest="policy_command", required=True)

    get = commands.add_parser("get", help="print the policy: every key's document, or one key's")
    get.add_argument("--key", default="", help="print only this key's document (e.g. global, tenant.<tenant_id>)")
    nats_arguments(get)
    get.set_defaults(func=lambda args: _run(_get, args))

    put = commands.add_parser(
        "set", help="validate a policy file and write its documents (nothing is written when any is invalid)"
    )
    put.add_argument("file", metavar="FILE", help="JSON: {key: document, ...}, or one document with --key ('-': stdin)")
    put.add_argument("--key", default="", help="FILE is the one document of this key")
    nats_arguments(put)
    put.set_defaults(func=lambda args: _run(_set, args))

    validate = commands.add_parser("validate", help="check a policy file against the schema (no NATS needed)")
    validate.add_argument("file", metavar="FILE", help="JSON: {key: document, ...}, or one document with --key")
    validate.add_argument("--key", default="", help="FILE is the one document of this key")
    validate.set_defaults(func=_validate_command)

    delete = commands.add_parser("delete", help="remove one key's document (its overrides stop applying)")
    delete.add_argument("key", metavar="KEY")
    nats_arguments(delete)
    delete.set_defaults(func=lambda args: _run(_delete, args))

    from llmesh.cli import experiment

    experiment.register(commands, sys.modules[__name__])


def nats_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nats",
        default="",
        help="NATS URL (default: LLMESH_NATS_URL, else the local mesh's, else " + DEFAULT_NATS_URL + ")",
    )
    parser.add_argument("--bucket", default=POLICY_BUCKET, help=f"KV bucket (default {POLICY_BUCKET})")


def nats_url(explicit: str = "") -> str:
    if explicit:
        return explicit
    if os.environ.get("LLMESH_NATS_URL"):
        return os.environ["LLMESH_NATS_URL"]
    state = load_state()
    return state.nats_url if state and state.nats_url else DEFAULT_NATS_URL


# -- validation ----------------------------------------------------------------------------------


def json_path(parts) -> str:
    """`$.global.cache.ttl_by_class['bad class']`, the way jsonschema writes paths."""
    path = "$"
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _PLAIN_NAME.match(part):
            path += f".{part}"
        else:
            path += "['" + part.replace("\\", "\\\\").replace("'", "\\'") + "']"
    return path


def _validator():
    import jsonschema

    schema = load_schema()
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _schema_errors(error, where: list) -> list[tuple[str, str]]:
    """(path, message) of one jsonschema error, reworded where the default message is unhelpful."""
    path = [*where, *error.absolute_path]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = sorted(error.schema.get("properties", {}))
        patterns = [re.compile(p) for p in error.schema.get("patternProperties", {})]
        extras = [k for k in error.instance if k not in known and not any(p.search(k) for p in patterns)]
        if not path:
            hint = f"a key is {KEY_FORMS}"
        else:
            hint = f"known: {', '.join(known)}" if known else "no such field"
        return [(json_path([*path, extra]), f"unknown {'key' if not path else 'field'} ({hint})") for extra in extras]
    if error.validator in ("oneOf", "anyOf") and error.context:
        # The alternative the value was meant for is the one that did not fail on its type.
        specific = [e for e in error.context if e.validator != "type"]
        if specific:
            return [(json_path([*where, *e.absolute_path]), e.message) for e in specific]
    message = error.message
    if error.validator == "pattern":
        message = f"{error.instance!r} does not match {error.validator_value}"
    if "propertyNames" in error.absolute_schema_path:
        # A bad key of an object: the path names the key, not the object.
        return [(json_path([*path, error.instance]), f"not an allowed key: {message}")]
    return [(json_path(path), message)]


def _thresholds(value) -> tuple[float, float] | None:
    try:
        if isinstance(value, str):
            value = value.split(",")
        low, high = (float(v) for v in value)
        return low, high
    except (TypeError, ValueError):
        return None


def _beyond_schema(bucket: dict[str, Any]) -> list[tuple[str, str]]:
    """What JSON Schema cannot say: the classifier's thresholds are in order (in variants too), an
    experiment's shares add up to at most 1."""
    problems = []
    for key, doc in bucket.items():
        experiments = doc.get("experiments") if isinstance(doc, dict) else None
        for name, experiment in (experiments or {}).items() if isinstance(experiments, dict) else ():
            variants = experiment.get("variants") if isinstance(experiment, dict) else None
            if not isinstance(variants, dict):
                continue
            shares = [v.get("share") for v in variants.values() if isinstance(v, dict)]
            total = sum(x for x in shares if isinstance(x, (int, float)) and not isinstance(x, bool))
            if total > 1.0 + 1e-9:
                problems.append(
                    (json_path([key, "experiments", name, "variants"]), f"the shares add up to {total:g}, more than 1")
                )
            for vname, variant in variants.items():
                if isinstance(variant, dict) and isinstance(variant.get("policy"), dict):
                    for path, message in _beyond_schema({key: variant["policy"]}):
                        problems.append(
                            (
                                path.replace(
                                    json_path([key]),
                                    json_path([key, "experiments", name, "variants", vname, "policy"]),
                                    1,
                                ),
                                message,
                            )
                        )
        section = doc.get("classifier") if isinstance(doc, dict) else None
        if isinstance(section, dict) and "tier_thresholds" in section:
            pair = _thresholds(section["tier_thresholds"])
            if pair and pair[0] > pair[1]:
                problems.append(
                    (
                        json_path([key, "classifier", "tier_thresholds"]),
                        f"low must not be above high (got {pair[0]}, {pair[1]})",
                    )
                )
    return problems


def policy_errors(bucket: Any) -> list[tuple[str, str]]:
    """(JSON path, message) of every problem of a whole-bucket object; empty when it is valid."""
    errors = []
    for error in _validator().iter_errors(bucket):
        errors += _schema_errors(error, [])
    if isinstance(bucket, dict):
        errors += _beyond_schema(bucket)
    return sorted(set(errors))


def is_policy_key(key: str) -> bool:
    schema = load_schema()
    return key in schema["properties"] or any(re.search(p, key) for p in schema["patternProperties"])


def document_errors(key: str, document: Any) -> list[tuple[str, str]]:
    """(JSON path, message) of every problem of one key's document (paths start at the document)."""
    if not is_policy_key(key):
        return [("$", f"{key!r} is not a policy key: use {KEY_FORMS}")]
    prefix = json_path([key])
    return [
        ("$" + path[len(prefix) :] if path.startswith(prefix) else path, message)
        for path, message in policy_errors({key: document})
    ]


def read_policy_file(path: str, key: str = "", *, refusal: str = "invalid") -> dict[str, Any]:
    """The file as a whole-bucket object (its one document under `key` when given); PolicyError
    naming every problem with its JSON path when it is not valid."""
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except OSError as exc:
        raise PolicyError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PolicyError(f"{path}: not JSON: {exc}") from None
    errors = document_errors(key, data) if key else policy_errors(data)
    if errors:
        what = f"{path} (the document of {key})" if key else path
        lines = [f"  {where}: {message}" for where, message in errors]
        raise PolicyError(f"{what} is {refusal}:\n" + "\n".join(lines), code=1)
    return {key: data} if key else data


def _validate_command(args) -> int:
    try:
        bucket = read_policy_file(args.file, args.key)
    except PolicyError as exc:
        print(f"llmesh policy: {exc}", file=sys.stderr)
        return exc.code
    print(f"{args.file}: valid ({', '.join(bucket) or 'no keys'})")
    return 0


# -- NATS KV -------------------------------------------------------------------------------------


async def _connect(url: str):
    import nats

    async def quiet(_exc: Exception) -> None:
        pass

    try:
        return await nats.connect(
            servers=[u.strip() for u in url.split(",") if u.strip()],
            name="llmesh-cli",
            connect_timeout=2.0,
            # Two tries per server, then a clear error (nats-py's pool otherwise retries forever).
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.2,
            error_cb=quiet,
        )
    except Exception as exc:
        raise PolicyError(
            f"cannot reach NATS at {url} ({type(exc).__name__}): pass --nats, set LLMESH_NATS_URL, "
            "or start a local mesh with `llmesh up`",
            code=1,
        ) from None


async def bucket(nc, name: str, *, create: bool):
    from nats.js.errors import BucketNotFoundError

    js = nc.jetstream()
    if create:
        # The services create it the same way (llmesh.kit.policy.PolicyStore).
        return await js.create_key_value(bucket=name, history=POLICY_HISTORY)
    try:
        return await js.key_value(name)
    except BucketNotFoundError:
        return None


async def read_bucket(kv) -> dict[str, Any]:
    from nats.js.errors import KeyNotFoundError, NoKeysError

    if kv is None:
        return {}
    try:
        keys = await kv.keys()
    except NoKeysError:
        return {}
    documents = {}
    for key in sorted(keys):
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            continue
        try:
            documents[key] = json.loads(entry.value)
        except ValueError:
            # The services ignore such a value; show it as it is.
            documents[key] = (entry.value or b"").decode("utf-8", "replace")
    return documents


async def _get(nc, args) -> None:
    documents = await read_bucket(await bucket(nc, args.bucket, create=False))
    if args.key:
        if args.key not in documents:
            raise PolicyError(f"no document under {args.key!r} in {args.bucket}", code=1)
        print(json.dumps(documents[args.key], indent=2, sort_keys=True))
    else:
        print(json.dumps(documents, indent=2, sort_keys=True))


async def _set(nc, args) -> None:
    kv = await bucket(nc, args.bucket, create=True)
    for key, document in args.documents.items():
        revision = await kv.put(key, json.dumps(document).encode())
        print(f"{key}  revision {revision}")


async def _delete(nc, args) -> None:
    kv = await bucket(nc, args.bucket, create=False)
    documents = await read_bucket(kv)
    if args.key not in documents:
        raise PolicyError(f"no document under {args.key!r} in {args.bucket}", code=1)
    await kv.delete(args.key)
    print(f"{args.key}  deleted")


def _run(command, args) -> int:
    if command is _set:
        try:
            # Validated before connecting: an invalid file never reaches the bucket.
            args.documents = read_policy_file(args.file, args.key, refusal="invalid, nothing written")
        except PolicyError as exc:
            print(f"llmesh policy: {exc}", file=sys.stderr)
            return exc.code
    return run_nats(command, args)


def run_nats(command, args, *, prog: str = "llmesh policy") -> int:
    """Runs `await command(nc, args)` on a connection to NATS; its errors as one line and an exit code."""
    url = nats_url(args.nats)

    async def call() -> None:
        nc = await _connect(url)
        try:
            await command(nc, args)
        finally:
            await nc.close()

    try:
        asyncio.run(call())
    except PolicyError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.code
    except Exception as exc:  # NATS errors: one line, not a traceback
        if type(exc).__module__.split(".")[0] != "nats":
            raise
        print(f"{prog}: NATS at {url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0
