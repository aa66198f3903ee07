"""Turns a model's token bytes into text deltas: UTF-8 characters split across tokens are held
until complete, and text that may be the start of a stop sequence is held until it is known
not to be one, so a stop sequence never reaches the caller."""

from __future__ import annotations

import codecs
from collections.abc import Iterable


class TextAssembler:
    def __init__(self, stop: Iterable[str] = ()):
        self._stop = tuple(s for s in stop if s)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        """Adds one token's bytes; returns the text that is safe to send now. Sets `stopped`
        once a stop sequence appeared (the text before it is returned, the rest dropped)."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(piece)
        cut = self._earliest_stop()
        if cut is not None:
            self.stopped = True
            text, self._pending = self._pending[:cut], ""
            return text
        keep = self._partial_stop_suffix()
        text = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep :]
        return text

    def finish(self) -> str:
        """The text still held when the generation ends without a stop sequence."""
        if self.stopped:
            return ""
        text = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return text

    def _earliest_stop(self) -> int | None:
        found = [i for i in (self._pending.find(s) for s in self._stop) if i >= 0]
        return min(found) if found else None

    def _partial_stop_suffix(self) -> int:
        """Length of the longest end of the pending text that begins some stop sequence."""
        longest = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:n]):
                    longest = n
                    break
        return longest
