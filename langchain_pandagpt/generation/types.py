"""The engine's public value types: what a request asks for and what it gets back.

:class:`SamplingParams` is validated where it is built, so a bad value fails in the caller's
thread with the parameter's name, never later inside the worker. :class:`RequestHandle` is how a
caller waits for a queued request; it never waits forever on a worker that has stopped.
"""

from __future__ import annotations

import math
import numbers
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from torch import Tensor

from langchain_pandagpt.errors import PandaGPTError

#: ``(completion ids so far, next-token logits (vocab,), float32) -> logits``; applied before
#: temperature, top-k, top-p and greedy argmax at every step (grammar-constrained decoding).
LogitsProcessor: TypeAlias = Callable[[list[int], Tensor], Tensor]
FinishReason: TypeAlias = Literal["stop", "length"]

#: Seeds ``torch.Generator.manual_seed`` takes without aliasing: it accepts ``[-2**63, 2**64)``
#: but maps a negative seed ``s`` to ``s + 2**64``, so only the non-negative range is offered.
MAX_SEED = 2**64 - 1
#: Bounds on request stop strings: they are matched against every decoded character.
MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 1024
#: How often a caller waiting on a request checks that a worker still serves it (seconds).
LIVENESS_POLL_S = 0.5


class EngineClosedError(PandaGPTError, RuntimeError):
    """The engine's worker stopped (``close()``, or it died) before the request finished."""


class NonFiniteLogitsError(PandaGPTError, FloatingPointError):
    """A request's next-token logits were NaN (or left no finite probability to sample from);
    only that request fails, the rest of its batch decodes on."""


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
        self._normalize("max_new_tokens", _as_int)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        self._normalize("temperature", _as_finite_float)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        self._normalize("top_p", _as_finite_float)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        self._normalize("top_k", _as_int)
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.seed is not None:
            self._normalize("seed", _as_int)
            if not 0 <= self.seed <= MAX_SEED:
                raise ValueError(f"seed must be in [0, 2**64 - 1], got {self.seed}")
        self._check_stop()
        if self.logits_processor is not None and not callable(self.logits_processor):
            raise ValueError(f"logits_processor must be callable, got {self.logits_processor!r}")

    def _normalize(self, name: str, convert: Callable[[str, object], object]) -> None:
        object.__setattr__(self, name, convert(name, getattr(self, name)))

    def _check_stop(self) -> None:
        stop = self.stop
        if isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop):
            raise ValueError(f"stop must be a sequence of non-empty strings, got {stop!r}")
        stop = tuple(stop)
        if len(stop) > MAX_STOP_STRINGS:
            raise ValueError(
                f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(stop)}; "
                "pass fewer stop strings"
            )
        if any(len(s) > MAX_STOP_LENGTH for s in stop):
            longest = max(len(s) for s in stop)
            raise ValueError(
                f"each stop string may have at most {MAX_STOP_LENGTH} characters, got one of "
                f"{longest}; shorten it"
            )
        object.__setattr__(self, "stop", stop)


def _as_int(name: str, value: object) -> int:
    """An integer (NumPy's too, as a plain ``int``); bools and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return int(value)


def _as_finite_float(name: str, value: object) -> float:
    """A finite real number as a ``float``; NaN, infinities and bools are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


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
    :meth:`result`; :meth:`cancel` drops it from its batch at the next step.

    Waiting checks every :data:`LIVENESS_POLL_S` seconds that the worker the request was queued
    on is still alive; if it is not, the request fails with :class:`EngineClosedError` instead of
    hanging.
    """

    def __init__(self) -> None:
        self._events: queue.SimpleQueue[StreamChunk | BaseException] = queue.SimpleQueue()
        self._done = threading.Event()
        self._cancelled = threading.Event()
        self._result: GenerationResult | None = None
        self._error: BaseException | None = None
        #: Whether the worker this request was queued on still runs; set when it is queued.
        self._worker_alive: Callable[[], bool] | None = None

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
                try:
                    event = self._events.get(timeout=LIVENESS_POLL_S)
                except queue.Empty:
                    self._check_worker()
                    continue
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
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._done.is_set():
            wait = LIVENESS_POLL_S
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    raise TimeoutError(f"generation did not finish within {timeout} s")
            if not self._done.wait(wait):
                self._check_worker()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    # -- called by the engine ------------------------------------------------------------------

    def _bind(self, worker_alive: Callable[[], bool]) -> None:
        self._worker_alive = worker_alive

    def _check_worker(self) -> None:
        """Fail the request if the worker it was queued on is gone. Liveness is read before
        ``done``: a worker finishes or fails its requests before its thread ends."""
        alive = self._worker_alive
        if alive is not None and not alive() and not self.done:
            self._fail(
                EngineClosedError("the engine's worker stopped before this request finished")
            )

    def _emit(self, chunk: StreamChunk) -> None:
        self._events.put(chunk)

    def _finish(self, result: GenerationResult, last: StreamChunk) -> None:
        if self.done:
            return
        self._result = result
        self._events.put(last)
        self._done.set()

    def _fail(self, error: BaseException) -> None:
        if self.done:
            return
        self._error = error
        self._events.put(error)
        self._done.set()
