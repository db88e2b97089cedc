"""CLIP byte-pair-encoding tokenizer, as ImageBind's text encoder expects it.

ImageBind reuses OpenAI CLIP's lowercase BPE (49,408 tokens, 77 positions). Parity with the
official ids needs the same text cleaning (ftfy, double HTML unescape, whitespace collapse), the
same ``regex`` pre-tokenizer (Python's ``re`` has no ``\\p{...}`` classes) and the same
truncation rule. The vocabulary file is MIT-licensed; see ``assets/LICENSE-CLIP-BPE``.
"""

from __future__ import annotations

import functools
import gzip
import html
import itertools
from collections.abc import Callable, Sequence
from importlib import resources

import ftfy
import regex
import torch

#: Packaged vocabulary file (byte-identical to OpenAI CLIP's and open_clip's).
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
#: Number of token ids: 2 x 256 byte symbols, the merges, then the two special tokens.
VOCAB_SIZE = 49408
#: Sequence length of ImageBind's text encoder.
CONTEXT_LENGTH = 77
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
SOT_ID = VOCAB_SIZE - 2
EOT_ID = VOCAB_SIZE - 1
#: Id used for padding after the end-of-text token (id 0 is "!", as upstream pads).
PAD_ID = 0

_END_OF_WORD = "</w>"
_NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2
_BPE_CACHE_SIZE = 1 << 16

# Special tokens first so a literal "<|endoftext|>" in a text stays one piece, as upstream.
_PIECE_PATTERN = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


def _byte_symbols() -> dict[int, str]:
    """One printable character per byte value, in vocabulary order (GPT-2's reversible map).

    Bytes that are already visible characters stand for themselves; the others (controls,
    spaces, a few Latin-1 gaps) are moved to code points from 256 up, so that no BPE symbol is
    whitespace and every UTF-8 byte sequence can be spelled.
    """
    visible = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    hidden = [b for b in range(256) if b not in visible]
    return {b: chr(b) for b in visible} | {b: chr(256 + i) for i, b in enumerate(hidden)}


def clean_text(text: str) -> str:
    """Normalise ``text`` as CLIP does before tokenising: ftfy, unescape, spaces, lowercase."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


def _read_merges() -> list[tuple[str, str]]:
    """The merge rules from the packaged vocabulary, in priority order (header line skipped)."""
    asset = resources.files("langchain_pandagpt.imagebind").joinpath("assets", VOCAB_FILE)
    lines = gzip.decompress(asset.read_bytes()).decode("utf-8").split("\n")
    return [
        (first, second) for first, second in (line.split() for line in lines[1 : 1 + _NUM_MERGES])
    ]


class ClipTokenizer:
    """CLIP's BPE tokenizer producing ImageBind's (B, 77) int64 token batches.

    Sequences are ``[SOT] + ids``, cut to their first 76 tokens, then ``[EOT]``, then padded
    with 0. This is upstream's current rule (Nov 2025): older releases appended EOT before
    truncating to 77, which dropped EOT on long texts so the text head read the largest BPE id
    instead. Like upstream, a literal ``<|endoftext|>`` inside a text becomes the special id.
    """

    def __init__(self) -> None:
        merges = _read_merges()
        self._byte_to_symbol = _byte_symbols()
        symbols = list(self._byte_to_symbol.values())
        vocab = [
            *symbols,
            *(s + _END_OF_WORD for s in symbols),
            *(first + second for first, second in merges),
            SOT_TOKEN,
            EOT_TOKEN,
        ]
        self.encoder: dict[str, int] = {token: index for index, token in enumerate(vocab)}
        self._ranks = {pair: rank for rank, pair in enumerate(merges)}
        # Per-instance cache: lru_cache on the method itself would keep every instance alive.
        self._bpe: Callable[[str], tuple[str, ...]] = functools.lru_cache(_BPE_CACHE_SIZE)(
            self._merge_word
        )

    def _merge_word(self, word: str) -> tuple[str, ...]:
        """Apply the merges to one pre-tokenised word, lowest rank first, until none applies."""
        parts = [*word[:-1], word[-1] + _END_OF_WORD]
        while len(parts) > 1:
            best = min(
                itertools.pairwise(parts), key=lambda pair: self._ranks.get(pair, _NUM_MERGES)
            )
            if best not in self._ranks:
                break
            parts = self._join_pair(parts, best)
        return tuple(parts)

    @staticmethod
    def _join_pair(parts: list[str], pair: tuple[str, str]) -> list[str]:
        """Replace every non-overlapping occurrence of ``pair`` (left to right) by its join."""
        joined: list[str] = []
        index = 0
        while index < len(parts):
            if index + 1 < len(parts) and (parts[index], parts[index + 1]) == pair:
                joined.append(parts[index] + parts[index + 1])
                index += 2
            else:
                joined.append(parts[index])
                index += 1
        return joined

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` after cleaning, without start/end tokens or truncation."""
        ids: list[int] = []
        for piece in _PIECE_PATTERN.findall(clean_text(text)):
            if piece in (SOT_TOKEN, EOT_TOKEN):
                ids.append(self.encoder[piece])
                continue
            spelled = "".join(self._byte_to_symbol[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self._bpe(spelled))
        return ids

    def tokenize(self, text: str, context_length: int = CONTEXT_LENGTH) -> list[int]:
        """``[SOT] + ids`` cut to ``context_length - 1`` tokens, then EOT, then 0-padding."""
        ids = [SOT_ID, *self.encode(text)][: context_length - 1]
        return [*ids, EOT_ID, *[PAD_ID] * (context_length - len(ids) - 1)]

    def __call__(self, texts: Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
        """Token ids of ``texts`` as a (len(texts), context_length) int64 tensor."""
        _check_texts(texts)
        rows = [self.tokenize(text, context_length) for text in texts]
        return torch.tensor(rows, dtype=torch.int64).reshape(len(rows), context_length)


def _check_texts(texts: Sequence[str]) -> None:
    """Reject a bare string (it would be tokenised per character) and non-string items."""
    if isinstance(texts, str):
        raise TypeError("text must be a list of strings, not a single str (wrap it: [text])")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text[{index}] is {type(text).__name__}, expected str")


@functools.cache
def default_tokenizer() -> ClipTokenizer:
    """The shared tokenizer over the packaged vocabulary (built once: reading it takes ~0.3 s)."""
    return ClipTokenizer()


def load_and_transform_text(
    text: Sequence[str], device: torch.device | str | None = None
) -> torch.Tensor:
    """Tokenise ``text`` for ImageBind: a (B, 77) int64 tensor on ``device`` (CPU if None)."""
    _check_texts(text)
    if len(text) == 0:
        raise ValueError("text is empty: pass at least one string")
    return default_tokenizer()(text).to(device)
