"""Token vocabularies: each token's bytes inside decoded text, and byte tries over them.

Handles SentencePiece-style vocabularies (``▁`` for spaces, ``<0xNN>`` byte fallback, as LLaMA
and Vicuna) and byte-level BPE (GPT-2 style) Hugging Face tokenizers. One
:class:`TokenVocabulary` per tokenizer and logits width, held weakly by the tokenizer.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import torch

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class TrieNode:
    __slots__ = ("children", "tokens")

    def __init__(self) -> None:
        self.children: dict[int, TrieNode] = {}
        self.tokens: list[int] = []


def _build_trie(entries: Iterator[tuple[int, bytes]]) -> TrieNode:
    root = TrieNode()
    for token, data in entries:
        node = root
        for byte in data:
            node = node.children.setdefault(byte, TrieNode())
        node.tokens.append(token)
    return root


def _plain_chars(data: bytes) -> int:
    """Characters of ``data`` if it can sit inside a JSON string as is, else 0."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return 0
    if any(char in '"\\' or char < " " for char in text):
        return 0
    return len(text)


def _gpt2_byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes-to-unicode map used by byte-level BPE vocabularies."""
    visible = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(visible)
    extra = 0
    for byte in range(256):
        if byte not in visible:
            visible.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(char): byte for byte, char in zip(visible, chars, strict=True)}


def tokenizer_token_bytes(tokenizer: Any) -> list[bytes | None]:
    """Each token's bytes as it appears inside decoded text; ``None`` for special tokens.

    Handles SentencePiece-style vocabularies (``▁`` for spaces, ``<0xNN>`` byte fallback, as
    LLaMA and Vicuna) and byte-level BPE (GPT-2 style) Hugging Face tokenizers.
    """
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_ids)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    byte_level = backend is not None and "ByteLevel" in repr(backend.decoder)
    decoder = _gpt2_byte_decoder() if byte_level else {}
    result: list[bytes | None] = []
    for token, piece in enumerate(pieces):
        if token in special or piece is None:
            result.append(None)
        elif byte_level:
            result.append(
                bytes(decoder[char] for char in piece)
                if set(piece) <= decoder.keys()
                else piece.encode()
            )
        elif match := _BYTE_TOKEN.fullmatch(piece):
            result.append(bytes((int(match.group(1), 16),)))
        else:
            result.append(piece.replace("▁", " ").encode())
    return result


class TokenVocabulary:
    """Token bytes of one tokenizer and the tries masks are computed from.

    ``size`` is the width of the model's logits (it may exceed the tokenizer; extra ids are
    never allowed).
    """

    def __init__(self, token_bytes: Sequence[bytes | None], size: int, eos_id: int | None) -> None:
        self.token_bytes = [*token_bytes[:size], *[None] * (size - len(token_bytes))]
        self.size = size
        self.eos_id = eos_id
        usable = [(t, data) for t, data in enumerate(self.token_bytes) if data]
        self.trie = _build_trie(iter(usable))
        lengths = [_plain_chars(data) if data else 0 for data in self.token_bytes]
        #: Characters of tokens that may appear inside a JSON string unchanged (0: not plain).
        self.plain_chars = torch.tensor(lengths, dtype=torch.int32)
        self.escape_trie = _build_trie(iter([(t, data) for t, data in usable if not lengths[t]]))
        text_start = [
            bool(data and data.lstrip(b" ")[:1] not in (b"", b"{")) for data in self.token_bytes
        ]
        #: Tokens that begin a plain-text answer (first non-space byte other than ``{``).
        self.text_start = torch.tensor(text_start, dtype=torch.bool)
        if eos_id is not None and eos_id < size:
            self.text_start[eos_id] = True
        self.newline_id = next((t for t, data in usable if data == b"\n"), None)

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, size: int | None = None) -> TokenVocabulary:
        """The (cached) vocabulary of a Hugging Face tokenizer, for logits of width ``size``."""
        size = len(tokenizer) if size is None else size
        with _VOCABULARY_LOCK:
            per_size = _VOCABULARIES.setdefault(tokenizer, {})
            vocabulary = per_size.get(size)
            if vocabulary is None:
                vocabulary = cls(tokenizer_token_bytes(tokenizer), size, tokenizer.eos_token_id)
                per_size[size] = vocabulary
        return vocabulary


_VOCABULARIES: weakref.WeakKeyDictionary[Any, dict[int, TokenVocabulary]] = (
    weakref.WeakKeyDictionary()
)
_VOCABULARY_LOCK = threading.Lock()
