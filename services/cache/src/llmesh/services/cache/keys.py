"""What identifies a request for caching, and its stable hashes.

Hashes are sha256 over a canonical JSON serialisation (sorted keys, no insignificant whitespace,
UTF-8), never over protobuf bytes: protobuf serialisation is not canonical (field order, unknown
fields and map order may differ between runtimes and versions).

Normalisation keeps case. Case carries meaning a model acts on ("US" vs "us", code identifiers,
"answer in ALL CAPS"), so folding it would serve one request another's answer; rewordings of any
kind, case included, are the semantic layer's job. Whitespace is normalised only where a model
reads it the same way: Unicode NFC, line endings, trailing spaces, runs of spaces inside a line,
runs of blank lines, and leading/trailing whitespace of a message. Indentation is kept because
code and Markdown depend on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import unicodedata

from llmesh.kit.chat import Message, Sampling

KEY_VERSION = 1

_INNER_SPACES = re.compile(r"(?<=\S)[ \t\f\v]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [_INNER_SPACES.sub(" ", line).rstrip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


@dataclasses.dataclass(frozen=True, slots=True)
class RequestKey:
    tenant_id: str
    use_case: str
    messages: tuple[Message, ...]
    model: str = ""
    sampling: Sampling = Sampling()
    max_tokens: int = 0


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _digest(value: object) -> str:
    return hashlib.sha256(_canonical(value)).hexdigest()


def _float(value: float | None) -> str | None:
    # Proto floats are float32: "%.6g" maps the float32 nearest 0.7 and a float64 0.7 to one text.
    return None if value is None else format(value, ".6g")


def _params(key: RequestKey) -> dict:
    s = key.sampling
    return {
        "model": key.model,
        "max_tokens": key.max_tokens,
        "temperature": _float(s.temperature),
        "top_p": _float(s.top_p),
        "top_k": s.top_k,
        "seed": s.seed,
        # A generation stops at whichever stop sequence comes first: order and repeats do not matter.
        "stop": sorted(set(s.stop)),
    }


def request_doc(key: RequestKey) -> dict:
    """The request as it came (not normalised), JSON-able: kept with the entry so that the answer
    can be generated again for the same key (a cache refresh)."""
    s = key.sampling
    return {
        "messages": [[m.role, m.content] for m in key.messages],
        "model": key.model,
        "max_tokens": key.max_tokens,
        "sampling": {
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": s.top_k,
            "seed": s.seed,
            "stop": list(s.stop),
        },
    }


def key_from_doc(tenant_id: str, use_case: str, doc: dict) -> RequestKey:
    sampling = doc["sampling"]
    return RequestKey(
        tenant_id=tenant_id,
        use_case=use_case,
        messages=tuple(Message(role, content) for role, content in doc["messages"]),
        model=doc["model"],
        sampling=Sampling(
            temperature=sampling["temperature"],
            top_p=sampling["top_p"],
            top_k=sampling["top_k"],
            seed=sampling["seed"],
            stop=tuple(sampling["stop"]),
        ),
        max_tokens=doc["max_tokens"],
    )


def _messages(messages: tuple[Message, ...]) -> list[list[str]]:
    return [[m.role, normalize_text(m.content)] for m in messages]


def exact_key(key: RequestKey) -> str:
    """The exact layer's key; also the id of the entry stored under it."""
    return _digest(
        {
            "v": KEY_VERSION,
            "tenant": key.tenant_id,
            "use_case": key.use_case,
            "messages": _messages(key.messages),
            "params": _params(key),
        }
    )


def params_hash(key: RequestKey) -> str:
    """Sampling parameters, max_tokens and the pinned model: a semantic match requires them equal."""
    return _digest({"v": KEY_VERSION, "params": _params(key)})


def last_user_index(messages: tuple[Message, ...]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user":
            return i
    raise ValueError("no user message")


def semantic_text(key: RequestKey) -> str:
    """The last user message: the only part of a request compared by meaning."""
    return normalize_text(key.messages[last_user_index(key.messages)].content)


def context_hash(key: RequestKey) -> str:
    """Everything but the last user message (system prompt, earlier turns, anything after it),
    which a semantic match requires to be equal."""
    i = last_user_index(key.messages)
    return _digest(
        {
            "v": KEY_VERSION,
            "before": _messages(key.messages[:i]),
            "after": _messages(key.messages[i + 1 :]),
        }
    )
