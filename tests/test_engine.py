"""GenerationEngine on the tiny random bundle: decoding, streaming, stops, batching, reuse."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import Tensor

from langchain_pandagpt.conversation import MediaItem, Message
from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.generation.engine import (
    GenerationEngine,
    GenerationResult,
    LogitsProcessor,
    SamplingParams,
    StreamChunk,
    _PrefixCache,
)
from langchain_pandagpt.generation.prompt import PromptSettings, build_prompt
from langchain_pandagpt.model.bundle import load_pandagpt
from langchain_pandagpt.model.modeling import PandaGPTModel

REFERENCE = PromptSettings(fidelity="reference")
GREEDY = SamplingParams(max_new_tokens=24)


@pytest.fixture(scope="module")
def model(tiny_bundle: Path) -> PandaGPTModel:
    return load_pandagpt(tiny_bundle)


@pytest.fixture(scope="module")
def engine(model: PandaGPTModel) -> Iterator[GenerationEngine]:
    with GenerationEngine(model) as engine:
        yield engine


@pytest.fixture(scope="module")
def fresh(model: PandaGPTModel) -> Iterator[GenerationEngine]:
    """No prefix reuse and one request at a time: the reference every fast path must match."""
    with GenerationEngine(model, prefix_cache_bytes=0, max_batch_size=1) as engine:
        yield engine


def embedding(seed: int) -> MediaItem:
    """A precomputed ImageBind embedding (the tiny ImageBind is 32 wide)."""
    vector = torch.randn(32, generator=torch.Generator().manual_seed(seed))
    return MediaItem("image", vector / vector.norm(), is_embedding=True)


def png() -> MediaItem:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 80, 20)).save(buffer, format="PNG")
    return MediaItem("image", buffer.getvalue())


def ask(text: str, *media: MediaItem) -> list[Message]:
    return [Message("human", text, list(media))]


def ids(model: PandaGPTModel, text: str) -> list[int]:
    return list(model.tokenizer.encode(text, add_special_tokens=False))


def force(forced: Sequence[int], then: int) -> LogitsProcessor:
    """Make the model emit ``forced`` and then ``then`` forever."""

    def processor(completion: list[int], logits: Tensor) -> Tensor:
        out = torch.full_like(logits, float("-inf"))
        out[forced[len(completion)] if len(completion) < len(forced) else then] = 0.0
        return out

    return processor


def answer(result: GenerationResult) -> tuple[str, list[int], str]:
    """What a request produced (usage aside: it says how much came from the prefix cache)."""
    return result.text, result.token_ids, result.finish_reason


def texts(chunks: list[StreamChunk]) -> list[str]:
    return [chunk.text for chunk in chunks]


def test_greedy_is_deterministic_and_streaming_matches(engine: GenerationEngine) -> None:
    conversation = ask("What is in this image?", embedding(0))
    first = engine.generate(conversation, GREEDY)
    assert answer(engine.generate(conversation, GREEDY)) == answer(first)
    chunks = list(engine.stream(conversation, GREEDY))
    assert "".join(texts(chunks)) == first.text
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    assert chunks[-1].finish_reason == first.finish_reason
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(first.token_ids)


def test_usage_counts_media_as_positions(engine: GenerationEngine, model: PandaGPTModel) -> None:
    conversation = ask("Compare these.", embedding(1), embedding(2))
    sequence = PromptSettings(media_fusion="sequence")
    layout = build_prompt(
        conversation, model.tokenizer, bos_token_id=model.bos_token_id, settings=sequence
    )
    result = engine.generate(conversation, SamplingParams(max_new_tokens=5), settings=sequence)
    assert result.prompt_tokens == layout.num_positions
    assert engine.count_prompt_tokens(conversation, settings=sequence) == layout.num_positions
    assert engine.count_prompt_tokens(conversation) == layout.num_positions - 1  # summed
    assert result.completion_tokens == len(result.token_ids) <= 5
    assert result.usage.total_tokens == result.prompt_tokens + result.completion_tokens


def test_finish_reasons(engine: GenerationEngine, model: PandaGPTModel) -> None:
    words = ids(model, "The quick brown fox jumps over the lazy dog.")
    eos = model.tokenizer.eos_token_id
    length = engine.generate(
        ask("Hi"), SamplingParams(max_new_tokens=4, logits_processor=force(words, eos))
    )
    assert (length.finish_reason, length.token_ids) == ("length", words[:4])
    assert length.text == "The quick brown fox"
    stop = engine.generate(
        ask("Hi"), SamplingParams(max_new_tokens=50, logits_processor=force(words[:3], eos))
    )
    assert (stop.finish_reason, stop.token_ids) == ("stop", [*words[:3], eos])
    assert stop.text == "The quick brown"


def test_utf8_characters_are_never_split(engine: GenerationEngine, model: PandaGPTModel) -> None:
    text = "é€😀"
    byte_ids = model.tokenizer.convert_tokens_to_ids([f"<0x{b:02X}>" for b in text.encode()])
    params = SamplingParams(
        max_new_tokens=20, logits_processor=force(byte_ids, model.tokenizer.eos_token_id)
    )
    chunks = list(engine.stream(ask("Say it."), params))
    # One run of byte tokens comes out when it ends: until then a later byte could still make
    # the whole run invalid UTF-8, which Hugging Face decodes as one U+FFFD per byte token.
    assert texts(chunks) == ["é€😀"]
    assert chunks[-1].finish_reason == "stop"
    # Runs between ordinary tokens stream run by run.
    eos = model.tokenizer.eos_token_id
    forced = [t for c in "éa€b😀" for t in (ids(model, c) if c.isascii() else _bytes(model, c))]
    params = SamplingParams(max_new_tokens=20, logits_processor=force(forced, eos))
    assert texts(list(engine.stream(ask("Say it."), params))) == ["é a", "€ b", "😀"]


def _bytes(model: PandaGPTModel, text: str) -> list[int]:
    """The byte-fallback tokens spelling ``text``."""
    return [model.tokenizer.convert_tokens_to_ids(f"<0x{b:02X}>") for b in text.encode()]


def test_streamed_text_is_the_decoded_text(engine: GenerationEngine, model: PandaGPTModel) -> None:
    text = "Naïve café, 日本語 and emoji 😀!\n\nA dog's ball isn't red ."
    forced = ids(model, text)
    eos = model.tokenizer.eos_token_id
    params = SamplingParams(max_new_tokens=len(forced), logits_processor=force(forced, eos))
    chunks = list(engine.stream(ask("Hi"), params))
    assert "".join(texts(chunks)) == model.tokenizer.decode(forced) == text
    assert len(chunks) > 10  # token by token, not in one piece at the end


def test_stop_strings_never_leak(engine: GenerationEngine, model: PandaGPTModel) -> None:
    words = ids(model, "The quick brown fox jumps over the lazy dog.")
    eos = model.tokenizer.eos_token_id
    params = SamplingParams(
        max_new_tokens=50, stop=["x jumps", "zzz"], logits_processor=force(words, eos)
    )
    chunks = list(engine.stream(ask("Hi"), params))
    assert "".join(texts(chunks)) == "The quick brown fo"
    assert chunks[-1].finish_reason == "stop"
    assert engine.generate(ask("Hi"), params).text == "The quick brown fo"
    # The turn separator ends the answer in default fidelity.
    turn = ids(model, "A cat.\n### Human: and then")
    chunks = list(
        engine.stream(
            ask("Hi"), SamplingParams(max_new_tokens=50, logits_processor=force(turn, eos))
        )
    )
    assert "".join(texts(chunks)) == "A cat."
    assert "#" not in "".join(texts(chunks))


def test_reference_stops_on_the_token_and_drops_two(
    engine: GenerationEngine, model: PandaGPTModel
) -> None:
    tokenizer = model.tokenizer
    eos = tokenizer.eos_token_id
    hashes = tokenizer.convert_tokens_to_ids("###")
    assert hashes in ids(model, "\n###")  # the tiny vocabulary's "##" of LLaMA
    quick = ids(model, "The quick brown fox")
    forced = [*quick[:3], hashes, *quick[3:]]
    conversation = ask("Hi", embedding(3))
    params = SamplingParams(max_new_tokens=50, logits_processor=force(forced, eos))

    reference = engine.generate(conversation, params, settings=REFERENCE)
    assert reference.token_ids == forced[:4]
    assert reference.finish_reason == "stop"
    assert reference.text == tokenizer.decode(
        [tokenizer.bos_token_id, *forced[:2]], skip_special_tokens=True
    )
    default = engine.generate(conversation, params)  # no newline before "###": not a turn end
    assert default.token_ids == [*forced, eos]
    assert default.text == tokenizer.decode(forced)

    short = SamplingParams(max_new_tokens=3, logits_processor=force(quick, eos))
    assert engine.generate(conversation, short, settings=REFERENCE).text == "The"
    assert engine.generate(conversation, short).text == "The quick brown"
    streamed = list(engine.stream(conversation, params, settings=REFERENCE))
    assert "".join(texts(streamed)) == reference.text


def test_seeded_sampling_is_reproducible(engine: GenerationEngine) -> None:
    conversation = ask("Describe the picture in detail.", embedding(4))
    sampled = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.95, top_k=50, seed=7)
    first = engine.generate(conversation, sampled)
    assert answer(engine.generate(conversation, sampled)) == answer(first)
    other = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.95, top_k=50, seed=8)
    assert engine.generate(conversation, other).token_ids != first.token_ids
    batched = engine.generate_batch([conversation, ask("Hello")], [sampled, GREEDY])
    assert answer(batched[0]) == answer(first)


def test_batched_greedy_equals_sequential(
    engine: GenerationEngine, fresh: GenerationEngine
) -> None:
    conversations = [
        ask("What is in this image?", png()),
        ask("Hi"),
        [Message("system", "Answer briefly."), *ask("What can you hear?", embedding(5))],
        [
            *ask("What is in this image?", embedding(6)),
            Message("assistant", "A cat is sleeping on a red sofa."),
            *ask("Thank you! Can you tell me more?", embedding(7), embedding(8)),
        ],
    ]
    batched = engine.generate_batch(conversations, GREEDY)
    assert [answer(r) for r in batched] == [
        answer(fresh.generate(c, GREEDY)) for c in conversations
    ]


def test_prefix_reuse_computes_only_the_new_turn(
    engine: GenerationEngine, fresh: GenerationEngine
) -> None:
    conversation = ask("What happens in the video?", embedding(9))
    first = engine.generate(conversation, GREEDY)
    follow_up = [
        *conversation,
        Message("assistant", first.text),
        *ask("Write a short poem about it."),
    ]
    reused = engine.generate(follow_up, GREEDY)
    recomputed = fresh.generate(follow_up, GREEDY)
    assert answer(reused) == answer(recomputed)
    assert recomputed.usage.cached_tokens == 0
    assert first.prompt_tokens <= reused.usage.cached_tokens < reused.prompt_tokens
    # A batch mixing a cached continuation with an uncached prompt stays exact too.
    mixed = engine.generate_batch([follow_up, ask("Is it warm or cold?")], GREEDY)
    assert mixed[0].usage.cached_tokens == reused.prompt_tokens - 1
    assert mixed[0].token_ids == reused.token_ids
    assert mixed[1].token_ids == fresh.generate(ask("Is it warm or cold?"), GREEDY).token_ids


def test_concurrent_submits_match_sequential(
    engine: GenerationEngine, fresh: GenerationEngine
) -> None:
    conversations = [ask(f"What is in image number {i}?", embedding(10 + i)) for i in range(8)]
    results: list[str | None] = [None] * 8
    start = threading.Barrier(8)

    def worker(i: int) -> None:
        start.wait()
        handle = engine.submit(conversations[i], GREEDY)
        if i % 2:
            results[i] = handle.result(timeout=60).text
        else:
            results[i] = "".join(chunk.text for chunk in handle.stream())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [fresh.generate(c, GREEDY).text for c in conversations]


def test_logits_processor_runs_every_step_on_the_completion(engine: GenerationEngine) -> None:
    seen: list[list[int]] = []

    def record(completion: list[int], logits: Tensor) -> Tensor:
        seen.append(completion)
        return logits

    result = engine.generate(ask("Hi"), SamplingParams(max_new_tokens=6, logits_processor=record))
    assert seen == [result.token_ids[:i] for i in range(len(result.token_ids))]
    assert (
        result.token_ids == engine.generate(ask("Hi"), SamplingParams(max_new_tokens=6)).token_ids
    )


def test_abandoned_stream_is_cancelled(engine: GenerationEngine, model: PandaGPTModel) -> None:
    endless = SamplingParams(max_new_tokens=500, logits_processor=force([], ids(model, "cat")[-1]))
    stream = engine.stream(ask("Hi"), endless)
    next(stream)
    stream.close()
    assert engine.generate(ask("Hi"), GREEDY).finish_reason in ("stop", "length")


def test_overlong_prompt_is_refused(engine: GenerationEngine, model: PandaGPTModel) -> None:
    limit = model.manifest.max_context
    prompt = engine.count_prompt_tokens(ask("Hi"))
    with pytest.raises(ValueError, match=rf"takes {prompt} tokens but at most 3 fit.*{limit}"):
        engine.generate(ask("Hi"), SamplingParams(max_new_tokens=limit - 3))


def test_a_bad_media_item_fails_only_its_request(engine: GenerationEngine, tmp_path: Path) -> None:
    missing = MediaItem("image", str(tmp_path / "gone.png"))
    bad, good = engine.submit(ask("Hi", missing)), engine.submit(ask("Hi"))
    with pytest.raises(MediaError, match=r"gone\.png: cannot be read"):
        bad.result(timeout=60)
    assert good.result(timeout=60).finish_reason in ("stop", "length")


def test_prompt_errors_raise_in_the_caller(engine: GenerationEngine) -> None:
    with pytest.raises(ValueError, match="needs media"):
        engine.submit(ask("Hi"), settings=REFERENCE)
    with pytest.raises(ValueError, match="2 SamplingParams for 1 conversations"):
        engine.generate_batch([ask("Hi")], [GREEDY, GREEDY])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_new_tokens": 0},
        {"temperature": -1.0},
        {"top_p": 0.0},
        {"top_k": -1},
        {"stop": "###"},
        {"stop": [""]},
    ],
)
def test_sampling_params_are_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def test_prefix_cache_is_lru_within_its_byte_budget() -> None:
    def kv(n: int) -> tuple[tuple[Tensor, Tensor], ...]:
        return ((torch.zeros(1, 1, n, 2), torch.zeros(1, 1, n, 2)),)

    cache = _PrefixCache(max_bytes=2 * 2 * 4 * 2 * 4)  # two 4-position entries
    cache.store((1, 2, 3, 4), kv(4))
    cache.store((1, 2, 3, 4, 5, 6, 7, 8), kv(8))  # extends the first: replaces it
    assert cache.lookup((1, 2, 3, 9))[0] == 3
    cache.store((7, 7), kv(2))  # over budget: the least recently used entry goes
    assert cache.lookup((1, 2, 3, 9))[0] == 0
    assert cache.lookup((7, 7))[0] == 1  # at least one position is left to compute
    cache.store((9,) * 20, kv(20))  # larger than the whole budget: not kept
    assert cache.lookup((9,) * 20)[0] == 0


def test_prefix_cache_is_bounded_in_entries_too() -> None:
    def kv(n: int) -> tuple[tuple[Tensor, Tensor], ...]:
        return ((torch.zeros(1, 1, n, 2), torch.zeros(1, 1, n, 2)),)

    cache = _PrefixCache(max_bytes=1 << 20, max_entries=3)
    for first in range(5):
        cache.store((first, 1, 2), kv(3))
    assert len(cache) == 3 and cache.nbytes == 3 * 2 * 3 * 2 * 4
    assert cache.lookup((0, 1, 2, 3))[0] == 0  # the oldest entries went
    assert cache.lookup((4, 1, 2, 3))[0] == 3
