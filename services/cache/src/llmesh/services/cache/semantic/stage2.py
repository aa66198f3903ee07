"""The second stage: asked only in the gray zone between the lower and upper similarity."""

from __future__ import annotations

from typing import Protocol


class SecondStage(Protocol):
    name: str

    async def score(self, query_text: str, candidate_text: str, similarity: float) -> float:
        """Higher: more likely the same question. Compared with the operating point's threshold."""
        ...
