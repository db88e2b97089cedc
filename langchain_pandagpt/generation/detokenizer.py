"""Incremental detokenization: token ids in, text that is safe to show out."""

from __future__ import annotations

from collections.abc import Callable, Sequence


class Detokenizer:
    """Incremental detokenization that never splits a character nor leaks part of a stop string.

    Each step decodes only a short window: the tokens already turned into text since the
    previous emission (context, so a word's leading space and merges come out right) plus the
    new ones, and keeps the suffix, as vLLM and TGI do; the cost per token stays constant. The
    window is not advanced while its text ends in U+FFFD (a multi-byte character whose remaining
    byte tokens have not come yet), and any tail that could be the start of a stop string is
    held back.
    """

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str], prefix: list[int]):
        self._decode = decode
        self._stops = tuple(stops)
        self._ids = list(prefix)
        self._window = 0  # first id of the decode window
        self._read = len(prefix)  # ids before this are in ``_decoded``
        self._decoded = ""
        #: The text released so far; the answer once generation has ended.
        self.text = ""
        self.stopped = False

    def push(self, token: int) -> str:
        """Add a visible token; return the text that is now safe to show."""
        self._ids.append(token)
        return self._release(final=False) if self._read_new(final=False) else ""

    def flush(self) -> str:
        """Release everything still held back (generation ended)."""
        if self.stopped:
            return ""
        self._read_new(final=True)
        return self._release(final=True)

    def _read_new(self, final: bool) -> bool:
        """Append the text of the unread ids to ``_decoded``; False while it is incomplete."""
        seen = self._decode(self._ids[self._window : self._read])
        text = self._decode(self._ids[self._window :])
        if not final and (len(text) <= len(seen) or text.endswith("\ufffd")):
            return False
        self._decoded += text[len(seen) :]
        self._window, self._read = self._read, len(self._ids)
        return True

    def _release(self, final: bool) -> str:
        text, start = self._decoded, len(self.text)
        cuts = [i for stop in self._stops if (i := text.find(stop, start)) >= 0]
        if cuts:
            self.stopped = True
            end = min(cuts)
        elif final:
            end = len(text)
        else:
            end = len(text) - max((self._partial_stop(text, s) for s in self._stops), default=0)
        delta = text[start:end]
        self.text += delta
        return delta

    @staticmethod
    def _partial_stop(text: str, stop: str) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of ``stop``."""
        return next((k for k in range(len(stop) - 1, 0, -1) if text.endswith(stop[:k])), 0)
