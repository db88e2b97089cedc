"""Generation engine: KV-cached decoding, streaming, sampling, batching and prefix reuse.

One background worker thread owns the model. Every call (``generate``, ``stream``,
``generate_batch``, ``submit``) builds its prompt in the caller's thread (so prompt errors raise
there) and queues a request; the worker groups the requests waiting at that moment (up to
``max_batch_size``, after a ``batch_wait_s`` window) into one left-padded batch and runs one
decode loop for all of them, so concurrent callers never interleave model state and N
concurrent requests cost about one batched run. Requests leave the batch as they finish;
new ones wait for the next batch (no continuous batching).

Failures stay with the requests they concern: a request whose media cannot be encoded, whose
logits processor raises or whose logits turn NaN fails alone and its batch decodes on; an error
anywhere else in a batch (a failed forward, even a ``KeyboardInterrupt``) fails that batch's
requests and the worker goes on with the next one. A caller never waits forever: if the worker
stops (``close()``, or it dies), queued requests fail with :class:`EngineClosedError`, and the
next request starts a new worker. The worker holds the model's :attr:`~PandaGPTModel.lock`
while it encodes media and runs forwards, so a caller thread that pre-encodes media with
``model.embed_media`` never runs ImageBind concurrently with it.

Prefix reuse (:mod:`~langchain_pandagpt.generation.prefix_cache`): a later prompt that starts
with the content of a finished request restarts from the longest cached prefix. Rows of one
batch may reuse prefixes of different lengths: the batch is laid out as
``[pad][cached][pad][new]`` per row, the holes masked out.

Stop rules (``PromptSettings.fidelity``):

* ``"default"``: stop on the string ``"\\n###"`` (so markdown ``##`` headings survive), on EOS
  and on the request's stop strings; the text ends before the stop string.
* ``"reference"``: the reference demo's rule: stop as soon as the token the tokenizer uses for
  ``##`` in ``"\\n###"`` (2277 for LLaMA) or EOS appears, and decode ``[BOS] + ids`` minus the
  last two tokens with ``skip_special_tokens``. Request stop strings still cut the text.

Streaming and non-streaming share one code path, so a result's text is exactly the
concatenation of its stream. Up to the first stop string it equals ``tokenizer.decode`` of the
visible ids (``skip_special_tokens=True``; the generated ids less EOS, or ``[BOS]`` plus all
but the last two in reference fidelity), invalid UTF-8 in byte-fallback runs included (see
:mod:`~langchain_pandagpt.generation.detokenizer`).
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from langchain_pandagpt.conversation import Message
from langchain_pandagpt.generation.decoder import KVBatch, KVCache, decoder_for
from langchain_pandagpt.generation.detokenizer import Detokenizer, byte_token_ids
from langchain_pandagpt.generation.prefix_cache import PrefixCache
from langchain_pandagpt.generation.prompt import (
    TURN_END,
    MediaSlot,
    PositionKey,
    PromptLayout,
    PromptSettings,
    TextSegment,
    build_prompt,
)
from langchain_pandagpt.generation.sampling import make_generator, select_tokens
from langchain_pandagpt.generation.types import (
    EngineClosedError,
    EngineStats,
    FinishReason,
    GenerationResult,
    LogitsProcessor,
    NonFiniteLogitsError,
    RequestHandle,
    SamplingParams,
    StreamChunk,
    Usage,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from langchain_pandagpt.model.modeling import PandaGPTModel

__all__ = [
    "EngineClosedError",
    "EngineStats",
    "FinishReason",
    "GenerationEngine",
    "GenerationResult",
    "LogitsProcessor",
    "NonFiniteLogitsError",
    "RequestHandle",
    "SamplingParams",
    "StreamChunk",
    "Usage",
]

logger = logging.getLogger(__name__)

#: The prefix cache under its former private name here.
_PrefixCache = PrefixCache


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
    detokenizer: Detokenizer | None = None
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
        self._byte_ids = byte_token_ids(tokenizer)
        self._special_ids = frozenset(tokenizer.all_special_ids)
        self._prefix_cache = PrefixCache(prefix_cache_bytes)
        self._decoder = decoder_for(model.llm)
        self._worker: _Worker | None = None
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
        """Stop the worker: the batch being decoded finishes, requests still queued fail with
        :class:`EngineClosedError`. Using the engine again starts a new worker."""
        with self._start_lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()

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
        """Hand ``requests`` to the worker, starting one if there is none or it has stopped."""
        while True:
            with self._start_lock:
                if self._worker is None or not self._worker.accepting:
                    if self._worker is not None:
                        logger.warning("the generation worker had stopped; starting a new one")
                    self._worker = _Worker(self)
                    self._worker.start()
                worker = self._worker
            if worker.submit(requests):
                return

    # ------------------------------------------------------------------------- worker thread

    def _run_batch(self, requests: list[_Request]) -> None:
        """Decode one batch collected by the worker. An error that escapes fails the batch."""
        for request in requests:
            if request.handle.cancelled and not request.handle.done:
                logger.debug("request cancelled while queued")
                request.handle._fail(CancelledError("the request was cancelled"))
        requests = [r for r in requests if not r.handle.done]
        if not requests:
            return
        self._stats = self._stats.add_batch(len(requests))
        with torch.inference_mode():
            with self.model.lock:
                rows = [r for r in requests if self._prepare(r)]
            if rows:
                self._decode(rows)

    def _prepare(self, request: _Request) -> bool:
        """Prefix lookup, input embeddings of the uncached positions, sampler and detokenizer.
        An error (undecodable media, say) fails only this request."""
        try:
            layout = request.layout
            if self._prefix_cache.max_bytes:
                request.keys = layout.position_keys()
                request.cached, request.past = self._prefix_cache.lookup(request.keys)
            request.embeds = self._embed(layout, request.cached)
            request.generator = make_generator(request.params, self.model.device)
        except Exception as error:
            request.past = request.embeds = None
            logger.warning("a request failed while being prepared (1 request failed): %s", error)
            request.handle._fail(error)
            return False
        params = request.params
        reference = request.settings.fidelity == "reference"
        bos = self.model.tokenizer.bos_token_id
        request.detokenizer = Detokenizer(
            self._decode_text,
            params.stop if reference else (TURN_END, *params.stop),
            [bos] if reference and bos is not None else [],
            byte_ids=self._byte_ids,
            special_ids=self._special_ids,
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
        started = time.perf_counter()
        size, reused = len(rows), sum(r.cached for r in rows)
        model, device = self.model, self.model.device
        batch, mask, next_positions, logits = self._prefill(rows)
        prefill = mask.shape[1] - max(r.cached for r in rows)
        steps = 1
        while True:
            tokens = select_tokens(rows, logits)
            going = [self._step(row, token) for row, token in zip(rows, tokens, strict=True)]
            if self._prefix_cache.max_bytes:
                for i, row in enumerate(rows):
                    if not going[i]:
                        self._store_prefix(row, batch, i, mask[i])
            keep = [i for i, row_goes_on in enumerate(going) if row_goes_on]
            if not keep:
                break
            if len(keep) < len(rows):
                index = torch.tensor(keep, device=device)
                batch.select(index)
                mask, next_positions = mask[index], next_positions[index]
                rows = [rows[i] for i in keep]
            fed = torch.tensor([tokens[i] for i in keep], device=device)[:, None]  # all ints
            mask = F.pad(mask, (0, 1), value=1)
            with model.lock:
                logits = batch.forward(model.embed_tokens(fed), next_positions, mask)
            next_positions = next_positions + 1
            steps += 1
        logger.debug(
            "batch of %d: %d cached positions reused, %d-position prefill, %d steps, %.1f ms",
            size,
            reused,
            prefill,
            steps,
            (time.perf_counter() - started) * 1e3,
        )

    def _prefill(self, rows: list[_Request]) -> tuple[KVBatch, Tensor, Tensor, Tensor]:
        """Lay the rows out as ``[pad][cached][pad][new]``, run the new positions in one
        forward. Returns the batch, its attention mask, each row's next position id and the
        logits of each row's last position."""
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
        with model.lock:
            logits = batch.forward(embeds, positions, mask)
        return batch, mask, positions[:, -1:] + 1, logits

    def _step(self, row: _Request, token: int | Exception) -> bool:
        """Account ``token`` to ``row``, stream the text it completes, and finish the row when it
        stops (or fail it, given an error instead of a token). Returns whether the row goes on."""
        detokenizer = row.detokenizer
        assert detokenizer is not None
        if isinstance(token, Exception):
            logger.warning(
                "a request failed after %d tokens (1 request failed): %s", len(row.generated), token
            )
            row.handle._fail(token)
            return False
        if row.handle.cancelled:
            logger.debug("request cancelled after %d tokens", len(row.generated))
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


class _Worker:
    """The engine's background thread and its own queue of request groups.

    A failure while collecting or running a batch fails that batch's requests, and the loop goes
    on. When the thread ends (``close()``, or an error in the loop itself), it stops accepting
    and fails every request still queued; the engine starts a new worker for the next request.
    """

    def __init__(self, engine: GenerationEngine) -> None:
        self._engine = engine
        self._queue: queue.SimpleQueue[list[_Request] | None] = queue.SimpleQueue()
        self._carry: list[_Request] | None = None
        self._lock = threading.Lock()  # orders submissions against closing
        self._accepting = True
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="pandagpt-engine", daemon=True)

    @property
    def accepting(self) -> bool:
        return self._accepting

    def start(self) -> None:
        self._thread.start()

    def submit(self, requests: list[_Request]) -> bool:
        """Queue one group; False when this worker no longer takes requests."""
        with self._lock:
            if not self._accepting:
                return False
            for request in requests:
                request.handle._bind(self._thread.is_alive)
            self._queue.put(requests)
        return True

    def close(self) -> None:
        """Stop after the batch in flight; queued requests fail. Waits for the thread, unless
        called from it (a logits processor closing its own engine)."""
        with self._lock:
            self._accepting, self._closing = False, True
            self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _work(self) -> None:
        logger.info("generation worker started")
        try:
            self._serve()
        except BaseException:  # a bug in the loop itself: the finally below fails the queue
            logger.exception("the generation worker died")
        finally:
            with self._lock:
                self._accepting = False
            waiting = self._drain()
            logger.info("generation worker stopped (%d queued requests failed)", len(waiting))
            _fail_all(waiting, EngineClosedError("the engine was closed"))

    def _serve(self) -> None:
        """Collect and run batches until closed; a failure fails its batch, not the loop."""
        while not self._closing:
            batch: list[_Request] = []
            try:
                if not self._collect(batch):
                    return
                self._engine._run_batch(batch)
            except BaseException as error:  # even KeyboardInterrupt: fail the batch, go on
                pending = [r for r in batch if not r.handle.done]
                logger.warning(
                    "generation batch failed (%d requests failed)", len(pending), exc_info=True
                )
                _fail_all(pending, _as_exception(error))

    def _collect(self, batch: list[_Request]) -> bool:
        """Fill ``batch`` with the first waiting group plus the groups that arrive within
        ``batch_wait_s`` and fit into ``max_batch_size``; False once the worker is closed."""
        group, self._carry = (self._carry or self._queue.get()), None
        if group is None:
            return False
        batch.extend(group)
        limit = self._engine.max_batch_size
        deadline = time.monotonic() + self._engine.batch_wait_s
        while len(batch) < limit:
            try:
                group = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if group is not None and len(batch) + len(group) <= limit:
                batch.extend(group)
                continue
            if group is None:
                self._queue.put(None)  # close after this batch
            else:
                self._carry = group
            break
        return True

    def _drain(self) -> list[_Request]:
        """Take every request still waiting off the queue."""
        waiting = list(self._carry or ())
        self._carry = None
        while True:
            try:
                group = self._queue.get_nowait()
            except queue.Empty:
                return waiting
            waiting.extend(group or ())


def _fail_all(requests: list[_Request], error: BaseException) -> None:
    """Fail the requests that are not done yet."""
    for request in requests:
        request.handle._fail(error)


def _as_exception(error: BaseException) -> Exception:
    """``KeyboardInterrupt`` or ``SystemExit`` raised in the worker reach the callers as a
    ``RuntimeError`` caused by them: re-raised as such in a caller's thread (or a server's
    event loop) they would read as that thread being interrupted."""
    if isinstance(error, Exception):
        return error
    wrapped = RuntimeError(f"generation was interrupted by {type(error).__name__}")
    wrapped.__cause__ = error
    return wrapped


def reference_stop_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The id the reference stops on: the first token of ``"\\n###"`` that holds a ``#`` (the
    ``##`` piece, 2277 in LLaMA's vocabulary)."""
    ids = tokenizer.encode(TURN_END, add_special_tokens=False)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    return next((i for i, piece in zip(ids, pieces, strict=True) if "#" in piece), None)
