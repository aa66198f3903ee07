"""The router's memo of classifications (docs/adr/0028): an exact hit of a prompt seen before
skips the classifier hop.

The classifier's answer depends on the tenant, the use case, the messages, the policy in force and
the complexity model that serves. A memo entry is keyed on the first four (the policy by its KV
revision) and remembers the model version that made it; it is served only while that version is
the one the router last heard of (from the classifier's answers and its model-loaded events), for
at most `ttl_s`, and only for a request whose own exact cache lookup hits: a request that goes on
to generation is classified by the classifier itself, which records it for its labels (ADR 0027).
A degraded (fallback) classification is never kept.

No gRPC here: the adapters in upstreams.py drive it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.router.domain import TIERS, CacheKey, Classification, GenerateCommand


def content_digest(tenant_id: str, key_or_command: CacheKey | GenerateCommand) -> bytes:
    """One request's content as the exact cache keys it: tenant, use case, messages, pinned model,
    sampling and max_tokens (a CacheKey and the GenerateCommand it was built from give the same)."""
    c = key_or_command
    h = hashlib.blake2b(digest_size=20)
    for part in (tenant_id, c.use_case, c.pinned_model, repr(c.sampling), str(c.max_tokens)):
        h.update(part.encode())
        h.update(b"\0")
    for m in c.messages:
        h.update(f"{m.role}\0{len(m.content)}\0".encode())
        h.update(m.content.encode())
    return h.digest()


def classifier_rollout_running(global_policy: Mapping[str, Any] | None) -> bool:
    """Whether the global policy document has a classifier rollout out (`classifier.rollout.candidate`):
    then the model version that classifies a request depends on its request id."""
    section = (global_policy or {}).get("classifier")
    rollout = section.get("rollout") if isinstance(section, Mapping) else None
    return isinstance(rollout, Mapping) and bool(rollout.get("candidate"))


@dataclasses.dataclass(frozen=True, slots=True)
class MemoKey:
    tenant_id: str
    use_case: str
    policy_revision: int
    digest: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry:
    classification: Classification
    model_version: str
    expires_at: float


class ClassificationMemo:
    """Bounded LRU of classifications with a short TTL, dropped whole when the classifier's model
    changes."""

    def __init__(self, *, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[MemoKey, _Entry] = OrderedDict()
        #: the classifier model version last heard of ("": none yet, nothing is served)
        self.model_version = ""

    @property
    def enabled(self) -> bool:
        return self._max_entries > 0 and self._ttl_s > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: MemoKey) -> Classification | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.model_version != self.model_version or entry.expires_at <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry.classification

    def put(self, key: MemoKey, classification: Classification) -> bool:
        """Keeps a classification made by the current model version; False when it may not be kept."""
        version = classification.model_version
        if (
            not self.enabled
            or classification.degraded
            or classification.tier not in TIERS
            or classification.sensitivity >= Sensitivity.RESTRICTED
            or not version
            or version != self.model_version
        ):
            return False
        self._entries[key] = _Entry(classification, version, self._clock() + self._ttl_s)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return True

    def drop(self, key: MemoKey) -> None:
        self._entries.pop(key, None)

    def saw_version(self, version: str) -> None:
        """The version of a classifier answer: another one than before drops every entry."""
        if version and version != self.model_version:
            self._entries.clear()
            self.model_version = version

    def clear(self) -> None:
        """Forgets everything, the model version too (a model was loaded, or events were missed)."""
        self._entries.clear()
        self.model_version = ""


class LookupOutcomes:
    """What the exact cache lookup of a request's content found, for the classify call running
    beside it: `expect` before the lookup ends, `report` when it ends (the exact hit's tier, or
    None). A concurrent request's lookup of the same content answers as well as the request's own."""

    def __init__(self) -> None:
        self._waiting: dict[bytes, list[asyncio.Future[int | None]]] = {}

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def expect(self, digest: bytes) -> asyncio.Future[int | None]:
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(digest, []).append(future)
        return future

    def report(self, digest: bytes, hit_tier: int | None) -> None:
        for future in self._waiting.pop(digest, ()):
            if not future.done():
                future.set_result(hit_tier)

    def forget(self, digest: bytes, future: asyncio.Future[int | None]) -> None:
        waiting = self._waiting.get(digest)
        if waiting is None:
            return
        try:
            waiting.remove(future)
        except ValueError:
            pass
        if not waiting:
            del self._waiting[digest]
