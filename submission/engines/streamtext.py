"""Generated tokens to streamed text: incremental detokenization and stop strings.

`IncrementalDecoder` turns token ids into text pieces without ever emitting
half a UTF-8 character and without re-decoding the whole text at each step.
`StopMatcher`: an engine feeds each new piece of text; `StopMatcher` returns what may be
shown now and, once a stop string appears, which one it was. Text that could
still turn out to be the start of a stop string is held back (at most the
longest stop string minus one character), so a stop string split across two
pieces is never half-emitted. Work per piece is proportional to the piece plus
that hold-back, never to the text generated so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StopMatcher:
    """Finds the earliest stop string in a stream of text pieces."""

    stops: tuple[str, ...]
    _held: str = field(default="", init=False)
    _keep: int = field(default=0, init=False)
    # After a match: the text that came after the stop string in the same piece (an engine
    # that decodes several tokens per step can stream tokens past a stop).
    past_stop: str = field(default="", init=False)

    def __post_init__(self) -> None:
        self.stops = tuple(s for s in self.stops if s)
        self._keep = max((len(s) for s in self.stops), default=1) - 1

    def feed(self, piece: str) -> tuple[str, str | None]:
        """(text safe to emit, matched stop string or None). After a match, stop feeding."""
        window = self._held + piece
        best_at, best_stop = -1, None
        for stop in self.stops:
            at = window.find(stop)
            if at >= 0 and (best_at < 0 or at < best_at):
                best_at, best_stop = at, stop
        if best_stop is not None:
            self._held = ""
            self.past_stop = window[best_at + len(best_stop) :]
            return window[:best_at], best_stop
        cut = len(window) - self._held_suffix(window)
        self._held = window[cut:]
        return window[:cut], None

    @property
    def held(self) -> str:
        """Text received but not yet emitted (it may be the start of a stop string)."""
        return self._held

    def flush(self) -> str:
        """The held-back text, when the stream ends without a stop string."""
        held, self._held = self._held, ""
        return held

    def _held_suffix(self, window: str) -> int:
        """Length of the longest suffix of `window` that is a proper prefix of some stop."""
        for length in range(min(self._keep, len(window)), 0, -1):
            tail = window[-length:]
            if any(stop.startswith(tail) for stop in self.stops):
                return length
        return 0


@dataclass
class IncrementalDecoder:
    """Decodes a growing list of token ids piece by piece (a HF tokenizer's `decode`).

    Each step decodes only a short window (the last few tokens already shown plus
    the new ones): byte-level BPE tokens can hold part of a character, so a piece
    ending in U+FFFD is held until the next token completes it.
    """

    tokenizer: Any
    context_tokens: int = 6  # tokens of left context that make the window decode like the whole
    _ids: list[int] = field(default_factory=list, init=False)
    _prefix_at: int = field(default=0, init=False)  # window start
    _read_at: int = field(default=0, init=False)  # tokens already turned into text

    def add(self, token_ids: list[int]) -> str:
        """Append new token ids; return the text they complete (may be empty)."""
        self._ids.extend(token_ids)
        prefix = self._decode(self._ids[self._prefix_at : self._read_at])
        full = self._decode(self._ids[self._prefix_at :])
        if full.endswith("\ufffd") or len(full) <= len(prefix):
            return ""
        self._read_at = len(self._ids)
        self._prefix_at = max(0, self._read_at - self.context_tokens)
        # Keep the list short: only the window is ever decoded again.
        if self._prefix_at > 4 * self.context_tokens:
            del self._ids[: self._prefix_at]
            self._read_at -= self._prefix_at
            self._prefix_at = 0
        return full[len(prefix) :]

    def flush(self) -> str:
        """Whatever is still pending at the end (an incomplete character decodes as U+FFFD)."""
        prefix = self._decode(self._ids[self._prefix_at : self._read_at])
        full = self._decode(self._ids[self._prefix_at :])
        self._read_at = len(self._ids)
        return full[len(prefix) :]

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        return self.tokenizer.decode(
            ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
