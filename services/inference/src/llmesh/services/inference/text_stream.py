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


class RepeatedLineGuard:
    """Stops a text stream that loops: once the same non-empty line (surrounding whitespace
    ignored; blank lines between copies do not break the run) has come `limit` times in a row,
    `stopped` is set and nothing more is sent. A line that may become the copy reaching the limit
    is held until it is known, so that copy is never sent. `limit` 0 turns the guard off."""

    def __init__(self, limit: int):
        self._limit = limit
        self._line = ""  # the current, unfinished line (sent and held parts)
        self._held = ""  # the part of it not sent yet
        self._previous: str | None = None
        self._run = 0
        self.stopped = False

    def feed(self, text: str) -> str:
        """Text in; returns what is safe to send now."""
        if self._limit <= 0:
            return text
        if self.stopped:
            return ""
        out: list[str] = []
        *complete, partial = text.split("\n")
        for segment in complete:
            self._line += segment
            if self._count(self._line.strip()):
                self.stopped = True
                return "".join(out)
            out.append(self._held + segment + "\n")
            self._line = self._held = ""
        self._line += partial
        # Held from the line's start, or not at all.
        if self._may_reach_limit(self._line) and len(self._held) + len(partial) == len(self._line):
            self._held += partial
        else:
            out.append(self._held + partial)
            self._held = ""
        return "".join(out)

    def finish(self) -> str:
        """The text still held when the stream ends."""
        if self._limit <= 0 or self.stopped:
            return ""
        held, self._held = self._held, ""
        if held and self._count(self._line.strip()):
            self.stopped = True
            return ""
        return held

    def _count(self, line: str) -> bool:
        """Counts a complete line; True when it reaches the limit."""
        if not line:
            return False
        if line == self._previous:
            self._run += 1
        else:
            self._previous, self._run = line, 1
        return self._run >= self._limit

    def _may_reach_limit(self, line: str) -> bool:
        return self._previous is not None and self._run >= self._limit - 1 and self._previous.startswith(line.lstrip())
