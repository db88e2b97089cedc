"""Incremental detokenization: token ids in, text that is safe to show out.

Safe means three things:

* the concatenation of everything released equals ``tokenizer.decode(ids,
  skip_special_tokens=True)`` of the ids pushed (cut at the first stop string);
* no character is split: a multi-byte character arrives whole;
* no part of a stop string leaks: a tail that could be the start of one is held back.

Byte-fallback tokenizers (SentencePiece/LLaMA) spell characters missing from the vocabulary as
``<0x..>`` byte tokens, and Hugging Face decodes each *run* of byte tokens as a whole: its
bytes if they are valid UTF-8, else one U+FFFD per byte token, including bytes that looked
like complete ASCII characters. So a run can only be released once it has ended (at the next
non-byte token, or at the end); until then it is held back.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a type only: importing transformers costs seconds
    from transformers import PreTrainedTokenizerBase

#: A byte-fallback piece: ``<0x00>`` .. ``<0xFF>``.
BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def byte_token_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Ids of the tokenizer's ``<0x..>`` byte-fallback pieces (empty for byte-level BPE)."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return frozenset(
        i
        for i, piece in enumerate(pieces)
        if isinstance(piece, str) and BYTE_PIECE.fullmatch(piece)
    )


class StopMatcher:
    """Finds one stop string in text fed piece by piece, in time linear in the text.

    Knuth-Morris-Pratt: :attr:`matched` is the length of the longest prefix of the stop string
    that ends the text fed so far (the tail to hold back), kept across calls, so each character
    is examined a constant number of times (amortised) whatever the stop string's length.
    """

    def __init__(self, stop: str) -> None:
        if not stop:
            raise ValueError("a stop string must not be empty")
        self.stop = stop
        self._fallback = _prefix_function(stop)
        #: Length of the longest prefix of the stop string that is a suffix of the text so far.
        self.matched = 0

    def feed(self, text: str) -> int | None:
        """Consume ``text``; return the index in it where the first whole stop string ends
        (exclusive), or ``None``. Feeding stops there."""
        stop, fallback, k = self.stop, self._fallback, self.matched
        for i, char in enumerate(text):
            while k and stop[k] != char:
                k = fallback[k - 1]
            if stop[k] == char:
                k += 1
                if k == len(stop):
                    self.matched = k
                    return i + 1
        self.matched = k
        return None


def _prefix_function(pattern: str) -> list[int]:
    """``p[i]``: length of the longest proper prefix of ``pattern[:i + 1]`` that is also its
    suffix (KMP failure function)."""
    p = [0] * len(pattern)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = p[k - 1]
        if pattern[i] == pattern[k]:
            k += 1
        p[i] = k
    return p


class Detokenizer:
    """Turns a request's visible token ids into text deltas (see the module docstring).

    Each step decodes only a short window: the tokens already turned into text since the
    previous read (context, so a word's leading space and merges come out right) plus the new
    ones, and keeps the suffix, as vLLM and TGI do; the cost per token stays constant. Nothing
    is read while a byte-fallback run is open or while the window's text ends in U+FFFD (a
    multi-byte character of a byte-level BPE whose remaining bytes have not come yet).

    ``byte_ids`` are the tokenizer's ``<0x..>`` pieces and ``special_ids`` the ids that
    ``decode`` skips (they do not end a byte run: once skipped, the bytes around them touch).
    ``prefix`` ids are decoded as context but never released (reference fidelity's BOS).
    """

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        stops: Sequence[str],
        prefix: Sequence[int] = (),
        *,
        byte_ids: Collection[int] = frozenset(),
        special_ids: Collection[int] = frozenset(),
    ) -> None:
        self._decode = decode
        self._matchers = [StopMatcher(stop) for stop in stops]
        self._byte_ids = byte_ids
        self._special_ids = special_ids
        self._ids = list(prefix)
        self._window = 0  # first id of the decode window
        self._read = len(self._ids)  # ids before this are in ``_decoded``
        self._decoded = ""
        self._fed = 0  # ``_decoded[:_fed]`` went through the stop matchers
        self._in_byte_run = False
        #: The text released so far; the answer once generation has ended.
        self.text = ""
        self.stopped = False

    def push(self, token: int) -> str:
        """Add a visible token; return the text that is now safe to show ("" once stopped)."""
        if self.stopped:
            return ""
        self._ids.append(token)
        if token in self._byte_ids:
            self._in_byte_run = True
            return ""
        if self._in_byte_run and token in self._special_ids:
            return ""
        self._in_byte_run = False
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
        """Release the decoded text up to the first stop string, or up to any tail that could
        still become one; the matchers see each decoded character once."""
        fed, self._fed = self._fed, len(self._decoded)
        new = self._decoded[fed:]
        cuts = []
        for matcher in self._matchers:
            end = matcher.feed(new)
            if end is not None:
                cuts.append(fed + end - len(matcher.stop))
        if cuts:
            self.stopped = True
            end = min(cuts)
        elif final:
            end = len(self._decoded)
        else:  # hold back the longest tail that may start a stop string
            end = len(self._decoded) - max((m.matched for m in self._matchers), default=0)
        delta = self._decoded[len(self.text) : end]
        self.text += delta
        return delta
