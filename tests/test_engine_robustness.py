"""GenerationEngine under failure: errors stay with their batch or row, nobody waits forever,
sampling parameters are checked up front, the model lock is honoured, fidelity to decode."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from langchain_pandagpt.conversation import MediaItem, Message
from langchain_pandagpt.generation import engine as engine_module
from langchain_pandagpt.generation.decoder import LeanKVBatch
from langchain_pandagpt.generation.engine import (
    EngineClosedError,
    GenerationEngine,
    LogitsProcessor,
    NonFiniteLogitsError,
    RequestHandle,
    SamplingParams,
)
from langchain_pandagpt.generation.prompt import PromptSettings
from langchain_pandagpt.generation.types import MAX_STOP_LENGTH, MAX_STOP_STRINGS
from langchain_pandagpt.model.bundle import load_pandagpt
from langchain_pandagpt.model.modeling import PandaGPTModel

GREEDY = SamplingParams(max_new_tokens=8)
HI = [Message("human", "Hi")]


@pytest.fixture(scope="module")
def model(tiny_bundle: Path) -> PandaGPTModel:
    return load_pandagpt(tiny_bundle)


@pytest.fixture
def engine(model: PandaGPTModel) -> Iterator[GenerationEngine]:
    with GenerationEngine(model, batch_wait_s=0.05) as engine:
        yield engine


def ask(text: str, *media: MediaItem) -> list[Message]:
    return [Message("human", text, list(media))]


def force(forced: Sequence[int], then: int) -> LogitsProcessor:
    def processor(completion: list[int], logits: Tensor) -> Tensor:
        out = torch.full_like(logits, float("-inf"))
        out[forced[len(completion)] if len(completion) < len(forced) else then] = 0.0
        return out

    return processor


def once(error: BaseException, real: Callable[..., Any]) -> Callable[..., Any]:
    """``real``, except that its first call raises ``error``."""
    calls = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise error
        return real(*args, **kwargs)

    return wrapper


def submit_together(
    engine: GenerationEngine,
    conversations: Sequence[list[Message]],
    params: Sequence[SamplingParams] | None = None,
) -> list[RequestHandle]:
    """Queue the requests as one group, so that they are decoded as one batch."""
    params = params or [GREEDY] * len(conversations)
    requests = [engine._request(c, p, None) for c, p in zip(conversations, params, strict=True)]
    engine._enqueue(requests)
    return [r.handle for r in requests]


def questions(n: int) -> list[list[Message]]:
    return [ask(f"Describe picture {i}.") for i in range(n)]


def error_of(handle: RequestHandle) -> BaseException:
    with pytest.raises(BaseException) as caught:
        handle.result(timeout=60)
    return caught.value


# ---------------------------------------------------------------------------------- failures


@pytest.mark.parametrize("error", [RuntimeError("forward exploded"), KeyboardInterrupt()])
def test_a_failed_forward_fails_its_batch_and_the_worker_goes_on(
    engine: GenerationEngine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: BaseException,
) -> None:
    monkeypatch.setattr(LeanKVBatch, "forward", once(error, LeanKVBatch.forward))
    with caplog.at_level(logging.WARNING, logger=engine_module.__name__):
        handles = submit_together(engine, questions(3))
    assert len(handles) == 3
    for handle in handles:
        failure = error_of(handle)
        if isinstance(error, Exception):
            assert failure is error
        else:  # not re-raised as a KeyboardInterrupt in the caller's thread
            assert isinstance(failure, RuntimeError)
            assert "KeyboardInterrupt" in str(failure)
            assert failure.__cause__ is error
    assert "3 requests failed" in caplog.text
    assert engine.generate(HI, GREEDY).finish_reason in ("stop", "length")


@pytest.mark.parametrize("error", [RuntimeError("prepare exploded"), KeyboardInterrupt()])
def test_a_failure_while_preparing(
    engine: GenerationEngine, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    """An ``Exception`` fails only the request being prepared; a ``KeyboardInterrupt`` the
    batch. Either way the next request is answered."""
    monkeypatch.setattr(engine, "_embed", once(error, engine._embed))
    handles = submit_together(engine, questions(3))
    if isinstance(error, Exception):
        assert error_of(handles[0]) is error
        assert all(h.result(timeout=60).finish_reason for h in handles[1:])
    else:
        assert all(isinstance(error_of(h).__cause__, KeyboardInterrupt) for h in handles)
    assert engine.generate(HI, GREEDY).finish_reason in ("stop", "length")


def test_a_failure_while_collecting_fails_what_was_taken(
    engine: GenerationEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = engine_module._Worker._collect

    def collect_then_fail(self: Any, batch: list[Any]) -> bool:
        result = real(self, batch)
        if not hasattr(collect_then_fail, "done"):
            collect_then_fail.done = True  # type: ignore[attr-defined]
            raise MemoryError("collect exploded")
        return result

    monkeypatch.setattr(engine_module._Worker, "_collect", collect_then_fail)
    handles = submit_together(engine, questions(2))
    assert all(isinstance(error_of(h), MemoryError) for h in handles)
    assert engine.generate(HI, GREEDY).finish_reason in ("stop", "length")


def test_a_dead_worker_never_leaves_a_caller_waiting(
    engine: GenerationEngine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An error in the worker's own error handling ends its thread: the request in flight fails
    (the caller polls the worker's liveness) and the next request gets a new worker."""
    monkeypatch.setattr(LeanKVBatch, "forward", once(RuntimeError("boom"), LeanKVBatch.forward))
    monkeypatch.setattr(
        engine_module, "_as_exception", once(SystemError("handler broke"), lambda e: e)
    )
    handle = engine.submit(HI, GREEDY)
    started = time.monotonic()
    with pytest.raises(EngineClosedError, match="worker stopped"):
        handle.result()
    assert time.monotonic() - started < 10
    with caplog.at_level(logging.WARNING, logger=engine_module.__name__):
        assert engine.generate(HI, GREEDY).finish_reason in ("stop", "length")
    assert "the generation worker died" in caplog.text
    assert "starting a new one" in caplog.text


def test_a_stream_on_a_dead_worker_ends() -> None:
    handle = RequestHandle()
    handle._bind(lambda: False)
    with pytest.raises(EngineClosedError):
        next(handle.stream())
    with pytest.raises(TimeoutError):
        RequestHandle().result(timeout=0.05)


def test_close_finishes_the_batch_in_flight_and_fails_the_queue(
    model: PandaGPTModel, caplog: pytest.LogCaptureFixture
) -> None:
    engine = GenerationEngine(model, max_batch_size=1, batch_wait_s=0)
    cat = model.tokenizer.encode("cat", add_special_tokens=False)[-1]
    long = SamplingParams(max_new_tokens=300, logits_processor=force([], cat))
    stream = engine.stream(HI, long)
    next(stream)  # decoding has started
    queued = [engine.submit(HI, GREEDY) for _ in range(3)]
    with caplog.at_level(logging.INFO, logger=engine_module.__name__):
        engine.close()
    chunks = list(stream)
    assert chunks[-1].finish_reason == "length"
    for handle in queued:
        with pytest.raises(EngineClosedError, match="closed"):
            handle.result(timeout=5)
    assert "generation worker stopped" in caplog.text
    # A closed engine starts a new worker when used again.
    assert engine.generate(HI, GREEDY).finish_reason in ("stop", "length")
    engine.close()


# ------------------------------------------------------------------------- sampling numbers


def nan_from(step: int) -> LogitsProcessor:
    def processor(completion: list[int], logits: Tensor) -> Tensor:
        return torch.full_like(logits, float("nan")) if len(completion) >= step else logits

    return processor


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_nan_row_fails_alone(engine: GenerationEngine, temperature: float) -> None:
    conversations = questions(4)
    plain = [engine.generate(c, GREEDY) for c in conversations]
    params = [GREEDY] * 4
    params[2] = SamplingParams(
        max_new_tokens=8, temperature=temperature, seed=3, logits_processor=nan_from(2)
    )
    handles = submit_together(engine, conversations, params)
    with pytest.raises(NonFiniteLogitsError, match=r"NaN|not finite"):
        handles[2].result(timeout=60)
    for i in (0, 1, 3):
        assert handles[i].result(timeout=60).token_ids == plain[i].token_ids
    assert engine.stats().largest_batch == 4
    assert engine.generate(HI, GREEDY).finish_reason in ("stop", "length")


def test_a_failing_logits_processor_fails_its_row_only(engine: GenerationEngine) -> None:
    def broken(completion: list[int], logits: Tensor) -> Tensor:
        raise ZeroDivisionError("grammar bug")

    bad = engine.submit(HI, SamplingParams(max_new_tokens=5, logits_processor=broken))
    good = engine.submit(HI, GREEDY)
    with pytest.raises(ZeroDivisionError, match="grammar bug"):
        bad.result(timeout=60)
    assert good.result(timeout=60).finish_reason in ("stop", "length")


def test_huge_seeds(engine: GenerationEngine) -> None:
    with pytest.raises(ValueError, match="seed"):
        SamplingParams(temperature=1.0, seed=2**64)
    with pytest.raises(ValueError, match="seed"):
        SamplingParams(temperature=1.0, seed=-1)
    largest = SamplingParams(max_new_tokens=4, temperature=1.0, seed=2**64 - 1)
    first = engine.generate(HI, largest)
    assert engine.generate(HI, largest).token_ids == first.token_ids


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"top_p": float("nan")}, "top_p"),
        ({"max_new_tokens": True}, "max_new_tokens"),
        ({"max_new_tokens": 3.0}, "max_new_tokens"),
        ({"top_k": False}, "top_k"),
        ({"seed": True}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"temperature": "hot"}, "temperature"),
        ({"stop": ["x"] * (MAX_STOP_STRINGS + 1)}, str(MAX_STOP_STRINGS)),
        ({"stop": ["x" * (MAX_STOP_LENGTH + 1)]}, str(MAX_STOP_LENGTH)),
        ({"stop": [3]}, "stop"),
    ],
)
def test_sampling_params_refuse_bad_values(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def test_sampling_params_take_numpy_numbers() -> None:
    np = pytest.importorskip("numpy")
    params = SamplingParams(
        max_new_tokens=np.int64(5), temperature=np.float32(0.5), seed=np.int64(1)
    )
    assert (params.max_new_tokens, params.temperature, params.seed) == (5, 0.5, 1)
    assert type(params.max_new_tokens) is int and type(params.temperature) is float


# ------------------------------------------------------------------------------ model lock


def test_media_encoding_in_a_caller_never_overlaps_the_workers_forwards(
    engine: GenerationEngine, model: PandaGPTModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    active: list[str] = []
    overlaps: list[tuple[str, ...]] = []
    counts = {"forward": 0, "imagebind": 0}

    def section(name: str, real: Callable[..., Any], pause: float) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            active.append(name)
            if len(active) > 1:
                overlaps.append(tuple(active))
            counts[name] += 1
            try:
                time.sleep(pause)  # widen the window a race would need
                return real(*args, **kwargs)
            finally:
                active.remove(name)

        return wrapper

    monkeypatch.setattr(LeanKVBatch, "forward", section("forward", LeanKVBatch.forward, 0.001))
    monkeypatch.setattr(
        model.imagebind, "encode", section("imagebind", model.imagebind.encode, 0.01)
    )
    cat = model.tokenizer.encode("cat", add_special_tokens=False)[-1]
    handle = engine.submit(HI, SamplingParams(max_new_tokens=150, logits_processor=force([], cat)))
    for i in range(10):  # what ChatPandaGPT's media check does in the caller's thread
        model.embed_media([MediaItem("image", _png(i))])
    assert handle.result(timeout=60).finish_reason == "length"
    assert counts["imagebind"] == 10 and counts["forward"] >= 100
    assert overlaps == []


def _png(seed: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (seed * 20 % 256, 80, 20)).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------- logging


def test_batches_are_logged(engine: GenerationEngine, caplog: pytest.LogCaptureFixture) -> None:
    def batch_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("batch of")]

    with caplog.at_level(logging.DEBUG, logger=engine_module.__name__):
        engine.generate(HI, GREEDY)
        deadline = time.monotonic() + 10  # logged once the loop ends, after the answer
        while not batch_lines() and time.monotonic() < deadline:
            time.sleep(0.01)
    (line,) = batch_lines()
    assert line.startswith("batch of 1: ") and "prefill" in line and line.endswith(" ms")


# --------------------------------------------------------------------------------- fidelity


def byte_tokens(model: PandaGPTModel, data: bytes) -> list[int]:
    return [model.tokenizer.convert_tokens_to_ids(f"<0x{b:02X}>") for b in data]


def text_tokens(model: PandaGPTModel, text: str) -> list[int]:
    return list(model.tokenizer.encode(text, add_special_tokens=False))


@pytest.mark.parametrize(
    "spelled",
    [
        [("t", "cle"), ("b", b"K\xff"), ("t", " f")],  # 'K' alone is ASCII; the run is not
        [("t", "cle"), ("b", b"\xe9\x41"), ("t", " and"), ("b", b"\xf0\x9f\x98")],  # ends open
        [("t", "ok"), ("b", "é€".encode()), ("b", b"\x80"), ("t", " x")],
    ],
)
@pytest.mark.parametrize("fidelity", ["default", "reference"])
def test_text_is_the_decode_of_the_visible_ids_even_for_invalid_utf8(
    engine: GenerationEngine,
    model: PandaGPTModel,
    spelled: list[tuple[str, Any]],
    fidelity: str,
) -> None:
    tokenizer = model.tokenizer
    forced = [
        token
        for kind, value in spelled
        for token in (text_tokens(model, value) if kind == "t" else byte_tokens(model, value))
    ]
    if fidelity == "reference":
        forced += text_tokens(model, " tail")  # the two ids reference fidelity hides
    params = SamplingParams(
        max_new_tokens=50, logits_processor=force(forced, tokenizer.eos_token_id)
    )
    vector = torch.randn(32, generator=torch.Generator().manual_seed(0))
    conversation = ask("Say it.", MediaItem("image", vector / vector.norm(), is_embedding=True))
    settings = PromptSettings(fidelity=fidelity)  # type: ignore[arg-type]
    result = engine.generate(conversation, params, settings=settings)
    if fidelity == "reference":
        visible = [tokenizer.bos_token_id, *result.token_ids[:-2]]
    else:
        visible = result.token_ids[:-1]  # less EOS
    assert result.text == tokenizer.decode(visible, skip_special_tokens=True)
    assert "\ufffd" in result.text
    streamed = "".join(c.text for c in engine.stream(conversation, params, settings=settings))
    assert streamed == result.text
