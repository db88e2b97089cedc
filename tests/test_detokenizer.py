"""Incremental detokenization against the tokenizer's own decode, and linear stop matching."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from langchain_pandagpt.generation.detokenizer import Detokenizer, StopMatcher, byte_token_ids


@pytest.fixture(scope="module")
def tokenizer(tiny_bundle: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_bundle / "llm")


def decoder(tokenizer: PreTrainedTokenizerBase) -> Detokenizer:
    return Detokenizer(
        lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True)),
        (),
        byte_ids=byte_token_ids(tokenizer),
        special_ids=frozenset(tokenizer.all_special_ids),
    )


def stream(detokenizer: Detokenizer, ids: list[int]) -> list[str]:
    return [detokenizer.push(token) for token in ids] + [detokenizer.flush()]


def test_byte_token_ids_are_the_256_byte_pieces(tokenizer: PreTrainedTokenizerBase) -> None:
    found = byte_token_ids(tokenizer)
    assert len(found) == 256
    assert tokenizer.convert_tokens_to_ids("<0xFF>") in found
    assert tokenizer.convert_tokens_to_ids("▁the") not in found


def test_streamed_text_equals_decode_on_random_ids(tokenizer: PreTrainedTokenizerBase) -> None:
    """Ordinary, byte (valid and invalid UTF-8 runs) and special tokens in any order: the
    deltas always add up to ``tokenizer.decode(ids, skip_special_tokens=True)``."""
    byte_ids = sorted(byte_token_ids(tokenizer))
    special = list(tokenizer.all_special_ids)
    ordinary = [i for i in range(len(tokenizer)) if i not in set(byte_ids) | set(special)]
    utf8 = [b for c in "é€😀日" for b in _byte_ids(tokenizer, c)]
    rng = random.Random(0)
    for _ in range(300):
        ids: list[int] = []
        for _ in range(rng.randint(1, 12)):
            pool = rng.choice([ordinary, byte_ids, utf8, special])
            ids.extend(rng.choice(pool) for _ in range(rng.randint(1, 3)))
        deltas = stream(decoder(tokenizer), ids)
        assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True), ids


def test_an_invalid_byte_run_decodes_as_hugging_face_does(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """``K`` looks like a whole ASCII character, but ``K\\xff`` is one invalid run: two U+FFFD."""
    ids = [
        *tokenizer.encode("cle", add_special_tokens=False),
        *_byte_ids(tokenizer, "K"),
        tokenizer.convert_tokens_to_ids("<0xFF>"),
        *tokenizer.encode(" f", add_special_tokens=False),
    ]
    deltas = stream(decoder(tokenizer), ids)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True) == "cle\ufffd\ufffd f"
    assert "K" not in "".join(deltas)


def _byte_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(f"<0x{b:02X}>") for b in text.encode()]


def _longest_partial(text: str, stop: str) -> int:
    """The quadratic definition: the longest tail of ``text`` that is a proper prefix."""
    return next((k for k in range(len(stop) - 1, 0, -1) if text.endswith(stop[:k])), 0)


def test_stop_matcher_agrees_with_the_definition() -> None:
    rng = random.Random(1)
    for _ in range(500):
        stop = "".join(rng.choice("ab") for _ in range(rng.randint(1, 6)))
        text = "".join(rng.choice("ab") for _ in range(rng.randint(0, 30)))
        matcher, fed, found = StopMatcher(stop), 0, None
        while fed < len(text) and found is None:
            piece = text[fed : fed + rng.randint(1, 4)]
            end = matcher.feed(piece)
            found = None if end is None else fed + end
            fed += len(piece)
        first = text.find(stop)
        assert found == (None if first < 0 else first + len(stop)), (stop, text)
        if found is None:
            assert matcher.matched == _longest_partial(text, stop), (stop, text)


def test_stop_strings_are_cut_and_never_leak() -> None:
    chars = "The quick brown fox jumps over the lazy dog."
    detokenizer = Detokenizer(lambda ids: "".join(chars[i] for i in ids), ["x jumps", "zzz"])
    deltas = stream(detokenizer, list(range(len(chars))))
    assert "".join(deltas) == "The quick brown fo"
    assert detokenizer.stopped
    assert all("x" not in delta for delta in deltas)


def test_a_long_stop_string_costs_linear_time() -> None:
    """A 1000-character stop string: the old tail check (every prefix length, each compared in
    full) took ~0.35 ms per token on this text; the matcher takes a few microseconds."""
    detokenizer = Detokenizer(lambda ids: "a" * len(ids), ["b" + "a" * 999])
    start = time.perf_counter()
    released = "".join(detokenizer.push(token) for token in range(10_000))
    assert time.perf_counter() - start < 1.0
    assert released + detokenizer.flush() == "a" * 10_000
    held = Detokenizer(lambda ids: "a" * len(ids), ["a" * 999 + "b"])
    released = "".join(held.push(token) for token in range(2000))
    assert released == "a" * (2000 - 999)  # the last 999 may still start the stop string
    assert held.flush() == "a" * 999
