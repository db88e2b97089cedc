"""The engine's public value types: what a request asks for and what it gets back."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from torch import Tensor

#: ``(completion ids so far, next-token logits (vocab,), float32) -> logits``; applied before
#: temperature, top-k, top-p and greedy argmax at every step (grammar-constrained decoding).
LogitsProcessor: TypeAlias = Callable[[list[int], Tensor], Tensor]
FinishReason: TypeAlias = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to decode one request. ``temperature=0`` is greedy; ``top_k=0`` and ``top_p=1``
    disable those filters (the reference demo ran Hugging Face's implicit ``top_k=50``)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: Sequence[str] = ()
    logits_processor: LogitsProcessor | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if isinstance(self.stop, str) or not all(self.stop):
            raise ValueError(f"stop must be a sequence of non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))


@dataclass(frozen=True)
class Usage:
    """Token accounting; media count as the positions they take."""

    prompt_tokens: int
    completion_tokens: int
    #: Prompt positions taken from the prefix cache instead of being computed.
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class GenerationResult:
    """A finished answer. ``token_ids`` are all generated ids, stop tokens included."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    usage: Usage

    @property
    def prompt_tokens(self) -> int:
        return self.usage.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.usage.completion_tokens


@dataclass(frozen=True)
class StreamChunk:
    """A text delta; the last chunk of a stream carries ``finish_reason`` and ``usage``."""

    text: str
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


@dataclass(frozen=True)
class EngineStats:
    """Counters since the engine started: requests decoded, batches run, largest batch."""

    requests: int = 0
    batches: int = 0
    largest_batch: int = 0

    def add_batch(self, size: int) -> EngineStats:
        return EngineStats(self.requests + size, self.batches + 1, max(self.largest_batch, size))

    def to_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "batches": self.batches,
            "largest_batch": self.largest_batch,
        }


class RequestHandle:
    """A queued request. Consume it from any one thread: iterate :meth:`stream` or call
    :meth:`result`; :meth:`cancel` drops it from its batch at the next step."""

    def __init__(self) -> None:
        self._events: queue.SimpleQueue[StreamChunk | BaseException] = queue.SimpleQueue()
        self._done = threading.Event()
        self._cancelled = threading.Event()
        self._result: GenerationResult | None = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()

    def stream(self) -> Iterator[StreamChunk]:
        """Text deltas as they are decoded; abandoning the iterator cancels the request."""
        try:
            while True:
                event = self._events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            if not self.done:
                self.cancel()

    def result(self, timeout: float | None = None) -> GenerationResult:
        """Wait for the answer (``TimeoutError`` after ``timeout`` seconds)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"generation did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _emit(self, chunk: StreamChunk) -> None:
        self._events.put(chunk)

    def _finish(self, result: GenerationResult, last: StreamChunk) -> None:
        self._result = result
        self._events.put(last)
        self._done.set()

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._events.put(error)
        self._done.set()
