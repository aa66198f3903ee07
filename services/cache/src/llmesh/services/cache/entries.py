"""A cached answer as every layer stores it, and its byte form (Redis value, semantic payload)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

ENTRY_FORMAT = 1


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    content: str
    model: str = ""
    backend: str = ""
    tier: int = 0  # 1..3, 0 when the caller did not say
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclasses.dataclass(frozen=True, slots=True)
class CacheEntry:
    entry_id: str
    tenant_id: str
    use_case: str
    answer: Answer
    created_at: float  # unix seconds
    expires_at: float  # unix seconds; ignored while pinned
    # document_id -> version the answer was built from
    content_versions: dict[str, int] = dataclasses.field(default_factory=dict)
    content_class: str = ""
    pinned: bool = False
    # What the semantic layer needs to re-index the entry (pin, unpin).
    text: str = ""
    context_hash: str = ""
    params_hash: str = ""
    semantic: bool = True
    # The request as it came (keys.request_doc): what a cache refresh generates again.
    request: dict[str, Any] = dataclasses.field(default_factory=dict)

    def expired(self, now: float) -> bool:
        return not self.pinned and self.expires_at <= now

    def built_from_older(self, document_id: str, version: int) -> bool:
        built = self.content_versions.get(document_id)
        return built is not None and built < version

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = dataclasses.asdict(self)
        doc["f"] = ENTRY_FORMAT
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes | str) -> "CacheEntry":
        doc = json.loads(data)
        doc.pop("f", None)
        doc["answer"] = Answer(**doc["answer"])
        doc["content_versions"] = {str(k): int(v) for k, v in doc.get("content_versions", {}).items()}
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})
