"""Recently completed generations, kept so that a repeated Generate is answered without generating
again (docs/adr/0018): a caller that lost the answer in flight (a router killed after the last
token, before it stored the answer) and asks again with the same request id and the same request
gets the recorded pieces and completion. Bounded by entries, age and total characters. Domain code
only (no grpc)."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from llmesh.services.inference.backend import GenerationRequest

C = TypeVar("C")


def fingerprint(request: GenerationRequest) -> str:
    """Everything that shapes the answer (model, messages, max_tokens, sampling with its stop
    sequences, the batch class that may pick a batch model), not the request id."""
    return hashlib.sha256(repr(dataclasses.replace(request, request_id="")).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Recorded(Generic[C]):
    fingerprint: str
    pieces: tuple[str, ...]
    completion: C
    recorded_at: float
    chars: int


class ReplayStore(Generic[C]):
    """An LRU of completed generations by request id. `entries` or `ttl_s` 0 turns it off."""

    def __init__(
        self,
        entries: int,
        ttl_s: float,
        max_chars: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.entries = entries
        self.ttl_s = ttl_s
        self.max_chars = max_chars
        self._clock = clock
        self._by_id: OrderedDict[str, Recorded[C]] = OrderedDict()
        self._chars = 0

    @property
    def enabled(self) -> bool:
        return self.entries > 0 and self.ttl_s > 0 and self.max_chars > 0

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def chars(self) -> int:
        return self._chars

    def get(self, request_id: str, request_fingerprint: str) -> Recorded[C] | None:
        """The generation recorded for this request id and fingerprint within the TTL."""
        if not self.enabled or not request_id:
            return None
        recorded = self._by_id.get(request_id)
        if recorded is None:
            return None
        if self._clock() - recorded.recorded_at > self.ttl_s:
            self._drop(request_id)
            return None
        if recorded.fingerprint != request_fingerprint:
            return None
        self._by_id.move_to_end(request_id)
        return recorded

    def fits(self, chars: int) -> bool:
        """Whether a generation of this many characters may still be recorded."""
        return chars <= self.max_chars

    def put(self, request_id: str, request_fingerprint: str, pieces: tuple[str, ...], completion: C) -> bool:
        """Records a completed generation (replacing one of the same request id); False when it is
        larger than the whole character budget."""
        if not self.enabled or not request_id:
            return False
        chars = len(request_id) + sum(len(p) for p in pieces)
        if not self.fits(chars):
            return False
        if request_id in self._by_id:
            self._drop(request_id)
        self._by_id[request_id] = Recorded(request_fingerprint, pieces, completion, self._clock(), chars)
        self._chars += chars
        self._evict()
        return True

    def _evict(self) -> None:
        now = self._clock()
        while self._by_id:
            oldest_id, oldest = next(iter(self._by_id.items()))
            if len(self._by_id) > self.entries or self._chars > self.max_chars or now - oldest.recorded_at > self.ttl_s:
                self._drop(oldest_id)
            else:
                break

    def _drop(self, request_id: str) -> None:
        recorded = self._by_id.pop(request_id)
        self._chars -= recorded.chars
