"""Generation engine: KV-cached decoding, streaming, sampling, batching and prefix reuse.

One background worker thread owns the model. Every call (``generate``, ``stream``,
``generate_batch``, ``submit``) builds its prompt in the caller's thread (so prompt errors raise
there) and queues a request; the worker groups the requests waiting at that moment (up to
``max_batch_size``, after a ``batch_wait_s`` window) into one left-padded batch and runs one
decode loop for all of them, so concurrent callers never interleave model state and N
concurrent requests cost about one batched run. Requests leave the batch as they finish;
new ones wait for the next batch (no continuous batching).

Prefix reuse: when a request finishes, the KV cache of its prompt plus answer is kept in an LRU
keyed by per-position content (token ids, media hashes). A later prompt that starts with the same
content (the same conversation plus a new turn) restarts from the longest cached prefix and
computes only the new positions. Rows of one batch may reuse prefixes of different lengths: the
batch is laid out as ``[pad][cached][pad][new]`` per row, the holes masked out.

Stop rules (``PromptSettings.fidelity``):

* ``"default"``: stop on the string ``"\\n###"`` (so markdown ``##`` headings survive), on EOS
  and on the request's stop strings; the text ends before the stop string.
* ``"reference"``: the reference demo's rule: stop as soon as the token the tokenizer uses for
  ``##`` in ``"\\n###"`` (2277 for LLaMA) or EOS appears, and decode ``[BOS] + ids`` minus the
  last two tokens with ``skip_special_tokens``. Request stop strings still cut the text.

Streaming and non-streaming share one code path, so a result's text is exactly the
concatenation of its stream. It equals ``tokenizer.decode`` of the visible ids, except where the
ids spell invalid UTF-8 (Hugging Face's byte fallback then turns a whole run of byte tokens into
U+FFFD, which no incremental decoder can anticipate).
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor

from langchain_pandagpt.conversation import Message
from langchain_pandagpt.generation.decoder import KVBatch, KVCache, decoder_for
from langchain_pandagpt.generation.prompt import (
    TURN_END,
    MediaSlot,
    PositionKey,
    PromptLayout,
    PromptSettings,
    TextSegment,
    build_prompt,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from langchain_pandagpt.model.modeling import PandaGPTModel

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


class _Detokenizer:
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


def _common_prefix(a: tuple[PositionKey, ...], b: tuple[PositionKey, ...]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    return next(i for i in range(n) if a[i] != b[i])


class _PrefixCache:
    """LRU of KV caches keyed by the per-position content of the sequence they hold, bounded
    by the bytes of the tensors."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[PositionKey, ...], KVCache] = OrderedDict()
        self._bytes = 0

    def lookup(self, keys: tuple[PositionKey, ...]) -> tuple[int, KVCache | None]:
        """Longest cached prefix of ``keys``, leaving at least one position to compute (its
        logits start the answer)."""
        best, best_key = 0, None
        for key in self._entries:
            n = _common_prefix(key, keys)
            if n > best:
                best, best_key = n, key
        best = min(best, len(keys) - 1)
        if best_key is None or best == 0:
            return 0, None
        self._entries.move_to_end(best_key)
        return best, tuple((k[:, :, :best], v[:, :, :best]) for k, v in self._entries[best_key])

    def store(self, keys: tuple[PositionKey, ...], kv: KVCache) -> None:
        """Keep ``kv``, dropping the entries it extends and then the least recently used."""
        if _nbytes(kv) > self.max_bytes:
            return
        for key in [key for key in self._entries if _common_prefix(key, keys) == len(key)]:
            self._bytes -= _nbytes(self._entries.pop(key))
        self._entries[keys] = kv
        self._bytes += _nbytes(kv)
        while self._bytes > self.max_bytes:
            self._bytes -= _nbytes(self._entries.popitem(last=False)[1])


def _nbytes(kv: KVCache) -> int:
    return sum(k.nbytes + v.nbytes for k, v in kv)


@dataclass(eq=False)
class _Request:
    layout: PromptLayout
    params: SamplingParams
    settings: PromptSettings
    handle: RequestHandle
    keys: tuple[PositionKey, ...] = ()
    cached: int = 0
    past: KVCache | None = None
    embeds: Tensor | None = None
    generator: torch.Generator | None = None
    detokenizer: _Detokenizer | None = None
    generated: list[int] = field(default_factory=list)
    #: Reference fidelity shows all but the last two ids: the newest ones wait here.
    lagging: deque[int] = field(default_factory=deque)


#: Engines whose worker may still run. They are closed at interpreter exit: a daemon worker
#: killed inside a torch kernel while the interpreter tears down aborts the whole process
#: ("terminate called without an active exception"), losing the exit status.
_LIVE_ENGINES: weakref.WeakSet[GenerationEngine] = weakref.WeakSet()


@atexit.register
def _close_live_engines() -> None:
    for engine in list(_LIVE_ENGINES):
        engine.close()


class GenerationEngine:
    """Decodes PandaGPT answers for one :class:`PandaGPTModel`; share one engine per model.

    ``settings`` is the default prompt layout (default: the bundle manifest's fidelity and media
    fusion); each call may override it. ``max_batch_size`` bounds how many concurrent requests
    are grouped; ``batch_wait_s`` is how long an idle worker waits for companions of a first
    request. ``prefix_cache_bytes`` bounds the KV caches kept for prefix reuse (0 disables it);
    the default 1 GiB holds one full 2048-token conversation of a 7B model in fp16, or many
    shorter ones. Call :meth:`close` (or use ``with``) to stop the worker thread.
    """

    def __init__(
        self,
        model: PandaGPTModel,
        *,
        settings: PromptSettings | None = None,
        max_batch_size: int = 8,
        batch_wait_s: float = 0.005,
        prefix_cache_bytes: int = 1 << 30,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model
        manifest = model.manifest
        self.settings = settings or PromptSettings(manifest.fidelity, manifest.media_fusion)
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.max_context = manifest.max_context
        tokenizer = model.tokenizer
        self._eos_id: int | None = tokenizer.eos_token_id
        self._reference_stop_id = reference_stop_id(tokenizer)
        self._prefix_cache = _PrefixCache(prefix_cache_bytes)
        self._decoder = decoder_for(model.llm)
        self._queue: queue.SimpleQueue[list[_Request] | None] = queue.SimpleQueue()
        self._carry: list[_Request] | None = None
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        _LIVE_ENGINES.add(self)
        self._stats = EngineStats()

    # ----------------------------------------------------------------------------- public API

    def count_prompt_tokens(
        self, messages: Sequence[Message], *, settings: PromptSettings | None = None
    ) -> int:
        """Prompt length in positions, media counted as the positions they take."""
        return self._layout(messages, settings).num_positions

    def submit(
        self,
        messages: Sequence[Message],
        params: SamplingParams | None = None,
        *,
        settings: PromptSettings | None = None,
    ) -> RequestHandle:
        """Queue one request for the batching worker and return at once."""
        request = self._request(messages, params or SamplingParams(), settings)
        self._enqueue([request])
        return request.handle

    def stream(
        self,
        messages: Sequence[Message],
        params: SamplingParams | None = None,
        *,
        settings: PromptSettings | None = None,
    ) -> Iterator[StreamChunk]:
        """Text deltas token by token; the last chunk has ``finish_reason`` and ``usage``."""
        return self.submit(messages, params, settings=settings).stream()

    def generate(
        self,
        messages: Sequence[Message],
        params: SamplingParams | None = None,
        *,
        settings: PromptSettings | None = None,
    ) -> GenerationResult:
        return self.submit(messages, params, settings=settings).result()

    def generate_batch(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        settings: PromptSettings | None = None,
    ) -> list[GenerationResult]:
        """Answer all conversations in one batched decode loop (whatever ``max_batch_size``)."""
        if params is None or isinstance(params, SamplingParams):
            per_request = [params or SamplingParams()] * len(conversations)
        else:
            per_request = list(params)
            if len(per_request) != len(conversations):
                raise ValueError(
                    f"got {len(per_request)} SamplingParams for {len(conversations)} conversations"
                )
        requests = [
            self._request(messages, p, settings)
            for messages, p in zip(conversations, per_request, strict=True)
        ]
        if requests:
            self._enqueue(requests)
        return [request.handle.result() for request in requests]

    def stats(self) -> EngineStats:
        """How requests were batched so far (a snapshot; the server shows it on /v1/stats)."""
        return self._stats

    def close(self) -> None:
        """Stop the worker once the queued requests are done."""
        with self._start_lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            self._queue.put(None)
            worker.join()

    def __enter__(self) -> GenerationEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ caller-thread helpers

    def _layout(self, messages: Sequence[Message], settings: PromptSettings | None) -> PromptLayout:
        return build_prompt(
            messages,
            self.model.tokenizer,
            bos_token_id=self.model.bos_token_id,
            settings=settings or self.settings,
        )

    def _request(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        settings: PromptSettings | None,
    ) -> _Request:
        settings = settings or self.settings
        layout = self._layout(messages, settings)
        limit = self.max_context - params.max_new_tokens
        if layout.num_positions > limit:
            raise ValueError(
                f"the prompt takes {layout.num_positions} tokens but at most {limit} fit "
                f"(context {self.max_context} minus max_new_tokens {params.max_new_tokens}); "
                "shorten the conversation or lower max_new_tokens"
            )
        return _Request(layout, params, settings, RequestHandle())

    def _enqueue(self, requests: list[_Request]) -> None:
        with self._start_lock:
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._work, name="pandagpt-engine", daemon=True
                )
                self._worker.start()
        self._queue.put(requests)

    # ------------------------------------------------------------------------- worker thread

    def _work(self) -> None:
        while (batch := self._collect()) is not None:
            for request in batch:  # cancelled while queued: release anyone still waiting
                if request.handle.cancelled:
                    request.handle._fail(CancelledError("the request was cancelled"))
            batch = [r for r in batch if not r.handle.cancelled]
            if batch:
                self._stats = self._stats.add_batch(len(batch))
                with torch.inference_mode():
                    self._run(batch)

    def _collect(self) -> list[_Request] | None:
        """The next batch: the first waiting group plus the groups that arrive within
        ``batch_wait_s`` and fit into ``max_batch_size``; ``None`` once the engine is closed."""
        group, self._carry = (self._carry or self._queue.get()), None
        if group is None:
            return None
        batch = list(group)
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.max_batch_size:
            try:
                group = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if group is not None and len(batch) + len(group) <= self.max_batch_size:
                batch.extend(group)
                continue
            if group is None:
                self._queue.put(None)  # close after this batch
            else:
                self._carry = group
            break
        return batch

    def _run(self, requests: list[_Request]) -> None:
        rows = [r for r in requests if self._prepare(r)]
        try:
            if rows:
                self._decode(rows)
        except Exception as error:  # a failed forward fails its batch, not the worker
            for row in rows:
                if not row.handle.done:
                    row.handle._fail(error)

    def _prepare(self, request: _Request) -> bool:
        """Prefix lookup, input embeddings of the uncached positions, sampler and detokenizer."""
        try:
            layout = request.layout
            if self._prefix_cache.max_bytes:
                request.keys = layout.position_keys()
                request.cached, request.past = self._prefix_cache.lookup(request.keys)
            request.embeds = self._embed(layout, request.cached)
        except Exception as error:
            request.handle._fail(error)
            return False
        params = request.params
        if params.temperature > 0:
            request.generator = torch.Generator(device=self.model.device)
            if params.seed is None:
                request.generator.seed()
            else:
                request.generator.manual_seed(params.seed)
        reference = request.settings.fidelity == "reference"
        bos = self.model.tokenizer.bos_token_id
        request.detokenizer = _Detokenizer(
            self._decode_text,
            params.stop if reference else (TURN_END, *params.stop),
            [bos] if reference and bos is not None else [],
        )
        return True

    def _embed(self, layout: PromptLayout, start: int) -> Tensor:
        """Input embeddings of positions ``start:`` of ``layout``; media slots that end before
        ``start`` are not encoded at all."""
        model = self.model
        device = model.device
        pieces: list[Tensor] = []
        if start == 0:
            pieces.append(model.embed_tokens(torch.tensor([layout.bos_token_id], device=device)))
        for first, segment in layout.spans():
            skip = start - first
            if skip >= segment.num_positions:
                continue
            skip = max(skip, 0)
            if isinstance(segment, TextSegment):
                ids = torch.tensor(segment.ids[skip:], device=device)
                pieces.append(model.embed_tokens(ids))
            else:
                pieces.append(self._media_tokens(segment)[skip:])
        return torch.cat(pieces)

    def _media_tokens(self, slot: MediaSlot) -> Tensor:
        tokens = self.model.encode_media(slot.items)
        return tokens.sum(dim=0, keepdim=True) if slot.fused else tokens

    def _decode(self, rows: list[_Request]) -> None:
        """Prefill all rows in one forward, then decode them step by step until each stops."""
        model, device = self.model, self.model.device
        cached = max(r.cached for r in rows)
        new = max(len(r.embeds) for r in rows if r.embeds is not None)
        mask = torch.zeros(len(rows), cached + new, dtype=torch.long, device=device)
        embeds = torch.zeros(len(rows), new, model.hidden_size, dtype=model.dtype, device=device)
        for i, row in enumerate(rows):
            assert row.embeds is not None
            mask[i, cached - row.cached : cached] = 1
            mask[i, cached + new - len(row.embeds) :] = 1
            embeds[i, new - len(row.embeds) :] = row.embeds
            row.embeds = None
        capacity = cached + new + max(r.params.max_new_tokens for r in rows)
        batch = self._decoder.start([r.past for r in rows], cached, capacity)
        for row in rows:
            row.past = None
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, cached:]
        logits = batch.forward(embeds, positions, mask)
        next_positions = positions[:, -1:] + 1
        while True:
            tokens = self._next_tokens(rows, logits)
            going = [self._step(row, token) for row, token in zip(rows, tokens, strict=True)]
            if self._prefix_cache.max_bytes:
                for i, row in enumerate(rows):
                    if not going[i]:
                        self._store_prefix(row, batch, i, mask[i])
            keep = [i for i, row_goes_on in enumerate(going) if row_goes_on]
            if not keep:
                return
            if len(keep) < len(rows):
                index = torch.tensor(keep, device=device)
                batch.select(index)
                mask, next_positions = mask[index], next_positions[index]
                rows, tokens = [rows[i] for i in keep], [tokens[i] for i in keep]
            step = model.embed_tokens(torch.tensor(tokens, device=device)[:, None])
            mask = F.pad(mask, (0, 1), value=1)
            logits = batch.forward(step, next_positions, mask)
            next_positions = next_positions + 1

    def _next_tokens(self, rows: list[_Request], logits: Tensor) -> list[int]:
        """One token per row: greedy rows share one argmax (one device sync per step)."""
        greedy = logits.argmax(-1).tolist()
        return [
            greedy[i]
            if row.params.temperature == 0 and row.params.logits_processor is None
            else self._sample(row, logits[i])
            for i, row in enumerate(rows)
        ]

    def _sample(self, row: _Request, logits: Tensor) -> int:
        """Logits processor, then greedy argmax or temperature -> top-k -> top-p sampling (the
        order of Hugging Face's warpers)."""
        params = row.params
        if params.logits_processor is not None:
            logits = params.logits_processor(list(row.generated), logits)
        if params.temperature == 0:
            return int(logits.argmax())
        logits = logits / params.temperature
        if params.top_k:
            kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if params.top_p < 1:
            ordered, order = logits.sort()
            drop = ordered.softmax(-1).cumsum(-1) <= 1 - params.top_p
            drop[-1] = False
            logits = logits.index_fill(0, order[drop], float("-inf"))
        return int(torch.multinomial(logits.softmax(-1), 1, generator=row.generator))

    def _step(self, row: _Request, token: int) -> bool:
        """Account ``token`` to ``row``, stream the text it completes, and finish the row when it
        stops. Returns whether the row goes on."""
        detokenizer = row.detokenizer
        assert detokenizer is not None
        if row.handle.cancelled:
            row.handle._fail(CancelledError("the request was cancelled"))
            return False
        row.generated.append(token)
        stopped = token == self._eos_id
        visible: int | None = None if stopped else token
        if row.settings.fidelity == "reference":
            stopped = stopped or token == self._reference_stop_id
            row.lagging.append(token)
            visible = row.lagging.popleft() if len(row.lagging) > 2 else None
        delta = "" if visible is None else detokenizer.push(visible)
        finish: FinishReason | None = None
        if stopped or detokenizer.stopped:
            finish = "stop"
        elif len(row.generated) >= row.params.max_new_tokens:
            finish = "length"
        if finish is None:
            if delta:
                row.handle._emit(StreamChunk(delta))
            return True
        delta += detokenizer.flush()
        if detokenizer.stopped:
            finish = "stop"
        usage = Usage(row.layout.num_positions, len(row.generated), row.cached)
        result = GenerationResult(detokenizer.text, list(row.generated), finish, usage)
        row.handle._finish(result, StreamChunk(delta, finish, usage))
        return False

    def _store_prefix(self, row: _Request, batch: KVBatch, slot: int, mask: Tensor) -> None:
        """Keep the KV of a finished row (batch slot ``slot``): its prompt and the answer tokens
        that were fed back (all but the last), without the padding."""
        if row.handle._error is not None:
            return
        index = mask.nonzero().squeeze(-1)
        keys = row.keys + tuple(row.generated[:-1])
        assert len(index) == len(keys)
        first, last = int(index[0]), int(index[-1])
        # One unbroken run (no cached prefix behind padding) copies as a slice, 4x faster.
        positions = slice(first, last + 1) if last - first + 1 == len(keys) else index
        self._prefix_cache.store(keys, batch.row(slot, positions))

    def _decode_text(self, ids: list[int]) -> str:
        text = self.model.tokenizer.decode(ids, skip_special_tokens=True)
        assert isinstance(text, str)
        return text


def reference_stop_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The id the reference stops on: the first token of ``"\\n###"`` that holds a ``#`` (the
    ``##`` piece, 2277 in LLaMA's vocabulary)."""
    ids = tokenizer.encode(TURN_END, add_special_tokens=False)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    return next((i for i, piece in zip(ids, pieces, strict=True) if "#" in piece), None)
