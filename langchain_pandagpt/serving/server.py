"""An OpenAI-compatible HTTP server for PandaGPT (FastAPI + uvicorn).

Endpoints: ``POST /v1/chat/completions`` (streaming or not), ``POST /v1/embeddings``
(ImageBind, text and media), ``GET /v1/models``, ``GET /v1/stats`` (engine batching counters)
and ``GET /health`` (503 when the engine is dead or stuck, see :mod:`.health`). Any OpenAI
client works, e.g. ``ChatOpenAI(base_url=...)``.

Sampling defaults follow OpenAI (``temperature`` 1, ``top_p`` 1); ``max_tokens`` defaults to
the server's ``default_max_tokens``, capped by the room left in the context.

Tools, ``tool_choice`` and ``response_format`` (JSON answers under the same always-valid
grammar as ``ChatPandaGPT``) and the parameters refused with a 400: see :mod:`.tools`.

Concurrency: the :class:`~langchain_pandagpt.generation.engine.GenerationEngine` decodes in its own
thread and batches requests that arrive together; the event loop only queues requests and
forwards text deltas, so concurrent requests share batched forward passes instead of waiting
for each other. Each open request holds one helper thread that waits on the engine. Media are
decoded and run through ImageBind before a request is queued, in a small pool of
``media_workers`` threads, and reach the engine as embeddings: however many or large a
request's media, the engine thread never decodes them, so other requests keep streaming.

Hostile input: a request is refused (4xx naming the JSON path of the bad part, see
:func:`~.protocol.decode_request` and :mod:`.parts`) before it costs anything; the API key is
checked before the body is read (:mod:`.guard`); media are capped per request; every phase
has the request's deadline, and work stops when the client leaves. Anything unexpected is a 500
in OpenAI error JSON on a connection that stays open.

Media parts, besides OpenAI's ``image_url`` and ``input_audio`` (see :mod:`.parts`):
``{"type": "input_<m>", "input_<m>": {"data": <base64>, "format": <ext>}}`` and
``{"type": "<m>_url", "<m>_url": {"url": <data: URL>}}`` for every modality ``<m>`` in image,
audio, video, thermal, depth and imu, and ``{"type": "file", "file": {"file_data": <data:
URL>, "filename": ..., "modality": ...}}`` (modality optional: it is guessed from the MIME type
and name hints such as ``room.depth.png``). Requests can never read files on the server or
fetch URLs unless the server was started with ``allow_local_files`` / ``allow_remote_media``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from langchain_pandagpt.conversation import Message as ChatTurn
from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.generation.constrained import answer_sampling
from langchain_pandagpt.generation.engine import (
    GenerationEngine,
    RequestHandle,
    SamplingParams,
    StreamChunk,
)
from langchain_pandagpt.generation.registry import get_shared_model, shared_encoder
from langchain_pandagpt.imagebind.tokenizer import CONTEXT_LENGTH, default_tokenizer
from langchain_pandagpt.media.item import MediaItem
from langchain_pandagpt.media.policy import MediaPolicy
from langchain_pandagpt.model.bundle import PrecisionChoice, imagebind_checkpoint
from langchain_pandagpt.model.embedder import EmbedderInput, MediaEmbedder
from langchain_pandagpt.serving.guard import RequestGuard, unexpected_error
from langchain_pandagpt.serving.health import EngineMonitor
from langchain_pandagpt.serving.parts import MediaLimits, PartReader
from langchain_pandagpt.serving.protocol import (
    APIError,
    ChatCompletionRequest,
    EmbeddingRequest,
    completion_chunk,
    completion_response,
    decode_request,
    embedding_response,
    model_card,
    new_completion_id,
)
from langchain_pandagpt.serving.tools import (
    DeltaStream,
    check_supported,
    completion_message,
    request_answer_format,
    with_tool_history,
)
from langchain_pandagpt.structured.formats import AnswerFormat, with_instructions

logger = logging.getLogger(__name__)

#: Model id under which ``/v1/embeddings`` serves the bundle's ImageBind.
EMBEDDING_MODEL = "imagebind"

T = TypeVar("T")


@dataclass(frozen=True)
class ServerSettings:
    """What the server accepts; checked at construction (``ValueError`` naming the setting).

    ``model_name`` is the id clients pass as ``model`` (default: the bundle's manifest name).
    ``api_key``: when set, every ``/v1`` request needs ``Authorization: Bearer <key>``; an
    empty key is refused rather than read as "no authentication".
    ``max_request_bytes`` caps a request body (media arrive base64-encoded inside it);
    ``request_timeout_s`` bounds a whole request (media encoding, generation, embeddings);
    ``default_max_tokens`` applies when a request gives no ``max_tokens``;
    ``max_open_requests`` bounds concurrently open generations (each holds one waiting thread;
    beyond it requests get a 503 to retry). ``max_media_items`` and ``max_media_bytes`` (decoded)
    cap the media of one request; ``media_workers`` threads decode and encode media.
    ``shutdown_timeout_s``: on SIGTERM, how long open requests may finish before they are
    cancelled. ``health_timeout_s``: ``/health`` answers 503 once the engine has moved
    neither a token nor its queue for this long.
    """

    model_name: str | None = None
    api_key: str | None = None
    max_request_bytes: int = 64 * 2**20
    request_timeout_s: float = 600.0
    default_max_tokens: int = 256
    max_open_requests: int = 256
    allow_local_files: bool = False
    allow_remote_media: bool = False
    max_media_items: int = 16
    max_media_bytes: int = 64 * 2**20
    media_workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    shutdown_timeout_s: float = 30.0
    health_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        key = self.api_key
        if key is not None and not key.strip():
            raise ValueError(
                "api_key is empty, which would turn authentication off: give a non-empty key "
                "(--api-key or PANDAGPT_API_KEY), or leave it unset to serve without one"
            )
        if key is not None and (key != key.strip() or not (key.isascii() and key.isprintable())):
            raise ValueError(
                "api_key must be printable ASCII without surrounding spaces "
                "(it travels in an HTTP header)"
            )
        at_least = {
            "max_request_bytes": 1,
            "default_max_tokens": 1,
            "max_open_requests": 1,
            "max_media_items": 0,
            "max_media_bytes": 1,
            "media_workers": 1,
        }
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        for name in ("request_timeout_s", "shutdown_timeout_s", "health_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0) or (
                value == 0 and name != "shutdown_timeout_s"
            ):
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")

    @property
    def media_policy(self) -> MediaPolicy:
        return MediaPolicy(
            allow_local_files=self.allow_local_files, allow_remote_media=self.allow_remote_media
        )

    @property
    def media_limits(self) -> MediaLimits:
        return MediaLimits(self.max_media_items, self.max_media_bytes)


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.to_dict(), status_code=error.status)


def _chunks(
    handle: RequestHandle, on_chunk: Callable[[], None], release: Callable[[], None]
) -> AsyncGenerator[StreamChunk, None]:
    """The engine's text deltas as an async iterator; leaving early cancels the request.

    A daemon thread (started now, ending with the request, then calling ``release``) blocks on
    the engine's queue and hands each chunk to the event loop, so the loop never waits on the
    engine and a hung engine cannot keep the process from exiting.
    """
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[StreamChunk | BaseException] = asyncio.Queue()

    def deliver(item: StreamChunk | BaseException) -> None:
        try:
            loop.call_soon_threadsafe(inbox.put_nowait, item)
        except RuntimeError:  # the loop is gone (server shutting down)
            handle.cancel()

    def pump() -> None:
        try:
            for chunk in handle.stream():
                on_chunk()
                deliver(chunk)
        except BaseException as error:  # delivered to the request, which re-raises it
            deliver(error)
        finally:
            release()

    threading.Thread(target=pump, name="pandagpt-wait", daemon=True).start()

    async def chunks() -> AsyncGenerator[StreamChunk, None]:
        try:
            while True:
                item = await inbox.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            handle.cancel()

    return chunks()


@dataclass
class _Chat:
    """A checked chat request: queued once its media are encoded."""

    body: ChatCompletionRequest
    answer: AnswerFormat
    turns: list[ChatTurn]
    media: list[tuple[str, MediaItem]]
    params: SamplingParams


class _Service:
    """The request handlers' shared state: engine, embedder, settings, helper threads."""

    def __init__(
        self,
        engine: GenerationEngine,
        settings: ServerSettings,
        embedder: MediaEmbedder | None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.model_name = settings.model_name or engine.model.manifest.name
        self.embedder = embedder
        self.created = int(time.time())
        self.monitor = EngineMonitor(engine, settings.health_timeout_s)
        self.open_slots = threading.BoundedSemaphore(settings.max_open_requests)
        self.media_pool = ThreadPoolExecutor(settings.media_workers, "pandagpt-media")

    def model_ids(self) -> list[str]:
        ids = [self.model_name]
        return [*ids, EMBEDDING_MODEL] if self.embedder is not None else ids

    def close(self) -> None:
        self.media_pool.shutdown(wait=False, cancel_futures=True)

    # -- chat ----------------------------------------------------------------------------

    def sampling(
        self, body: ChatCompletionRequest, turns: Sequence[ChatTurn], answer: AnswerFormat
    ) -> SamplingParams:
        """Sampling parameters, with ``max_tokens`` defaulted and checked against the context
        (JSON answers get at least what their shortest form needs)."""
        context = self.engine.max_context
        prompt = self.engine.count_prompt_tokens(turns)
        wanted = body.requested_max_tokens
        room = context - prompt
        if room < 1 or (wanted is not None and wanted > room):
            total = prompt + (wanted or 0)
            parts = f"{prompt} in the messages"
            if wanted:
                parts += f", {wanted} in the completion"
            raise APIError(
                400,
                f"this model's maximum context length is {context} tokens, but {total} were "
                f"requested ({parts}); shorten the messages or lower max_tokens",
                param="messages",
                code="context_length_exceeded",
            )
        model = self.engine.model
        params = answer_sampling(
            answer,
            model.tokenizer,
            model.vocab_size,
            self.engine.settings.fidelity,
            max_tokens=wanted or min(self.settings.default_max_tokens, room),
            stop=body.stops,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=body.top_k or 0,
            seed=body.seed,
        )
        if params.max_new_tokens > room:
            raise APIError(
                400,
                f"the shortest answer of this format takes {params.max_new_tokens} tokens, but "
                f"only {room} are left in the context after the {prompt} of the messages; "
                "shorten the messages or the schema",
                param="messages",
                code="context_length_exceeded",
            )
        return params

    def prepare_chat(self, raw: bytes) -> _Chat:
        """Parses and checks a chat request, reads (but does not decode) its media and builds
        its sampling parameters: everything that can be refused is refused here."""
        body = decode_request(raw, ChatCompletionRequest)
        if body.model != self.model_name:
            raise APIError(
                404,
                f"the model {body.model!r} does not exist; this server has {self.model_name!r}",
                param="model",
                code="model_not_found",
            )
        check_supported(body)
        answer = request_answer_format(body)
        reader = PartReader(self.settings.media_policy, self.settings.media_limits)
        turns = with_tool_history(body.messages, reader.messages(body.messages))
        if answer.instructions:
            turns = with_instructions(turns, answer.instructions, self.engine.settings.fidelity)
        return _Chat(body, answer, turns, reader.media, self.sampling(body, turns, answer))

    def encode_media(
        self, media: Sequence[tuple[str, MediaItem]], cancelled: threading.Event
    ) -> dict[int, MediaItem]:
        """ImageBind embeddings of a request's media (by ``id`` of the item), as the engine
        would compute them; a bad item is a 400 naming its part. Stops when ``cancelled``."""
        model = self.engine.model
        encoded: dict[int, MediaItem] = {}
        for where, item in media:
            if cancelled.is_set():
                break
            try:
                vector = model.embed_media([item])[0]
            except (ValueError, OSError) as error:
                raise _media_error(where, error) from error
            # float32 on the CPU holds any model dtype exactly and hashes on any device.
            embedding = vector.detach().float().cpu()
            encoded[id(item)] = MediaItem(item.modality, embedding, is_embedding=True, name=where)
        return encoded

    async def chat(self, request: Request) -> Response:
        deadline = time.monotonic() + self.settings.request_timeout_s
        chat = await run_in_threadpool(_as_api_errors(self.prepare_chat), await request.body())
        turns = chat.turns
        if chat.media:
            work = partial(self.encode_media, chat.media)
            encoded = await _wait(request, self.in_pool(work), deadline)
            turns = [replace(t, media=[encoded[id(i)] for i in t.media]) for t in turns]
        handle = await run_in_threadpool(_as_api_errors(self.engine.submit), turns, chat.params)
        if not self.open_slots.acquire(blocking=False):
            handle.cancel()
            raise APIError(
                503,
                f"the server has {self.settings.max_open_requests} open requests; retry later",
                type="server_error",
                code="server_overloaded",
            )
        chunks = _chunks(handle, self.monitor.progressed, self.open_slots.release)
        completion_id = new_completion_id()
        body, answer = chat.body, chat.answer
        if body.stream:
            try:  # the first chunk follows the prefill: errors until then are plain 4xx/5xx
                first = await _wait(request, _next(chunks, deadline), deadline)
            except BaseException:
                await chunks.aclose()
                raise
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            deltas = DeltaStream(answer)
            events = self._events(completion_id, first, chunks, deltas, deadline, include_usage)
            # Also cancels the generation if the response never starts streaming.
            background = BackgroundTask(handle.cancel)
            return StreamingResponse(events, media_type="text/event-stream", background=background)

        async def collect() -> tuple[str, StreamChunk]:
            async with aclosing(chunks):
                text: list[str] = []
                while True:
                    chunk = await _next(chunks, deadline)
                    text.append(chunk.text)
                    if chunk.finish_reason is not None:
                        return "".join(text), chunk

        text, last = await _wait(request, collect(), deadline)
        assert last.usage is not None and last.finish_reason is not None
        message, finish_reason = completion_message(text, answer, last.finish_reason)
        return JSONResponse(
            completion_response(completion_id, body.model, message, finish_reason, last.usage)
        )

    async def _events(
        self,
        completion_id: str,
        first: StreamChunk,
        chunks: AsyncGenerator[StreamChunk, None],
        deltas: DeltaStream,
        deadline: float,
        include_usage: bool,
    ) -> AsyncIterator[bytes]:
        """Server-sent events: a role chunk, content or tool-call deltas, the finish chunk
        (carrying the last delta), the usage chunk (if asked), ``[DONE]``. An error after the
        start arrives as an ``error`` event (and the stream still ends properly)."""
        model = self.model_name

        def event(data: dict[str, Any]) -> bytes:
            return b"data: " + _json(data) + b"\n\n"

        yield event(completion_chunk(completion_id, model, delta={"role": "assistant"}))
        chunk = first
        try:
            while True:
                final = chunk.finish_reason is not None
                pieces = deltas.feed(chunk.text, final=final)
                if chunk.finish_reason is not None:
                    *before, last = pieces or [{}]
                    for piece in before:
                        yield event(completion_chunk(completion_id, model, delta=piece))
                    finish_reason = deltas.finish_reason(chunk.finish_reason)
                    yield event(
                        completion_chunk(
                            completion_id, model, delta=last, finish_reason=finish_reason
                        )
                    )
                    if include_usage:
                        yield event(completion_chunk(completion_id, model, usage=chunk.usage))
                    break
                for piece in pieces:
                    yield event(completion_chunk(completion_id, model, delta=piece))
                chunk = await _next(chunks, deadline)
        except APIError as error:
            yield event(error.to_dict())
        except Exception as error:
            logger.error("stream %s failed", completion_id, exc_info=error)
            yield event(unexpected_error(error).to_dict())
        finally:
            await chunks.aclose()
        yield b"data: [DONE]\n\n"

    # -- embeddings ----------------------------------------------------------------------

    def prepare_embeddings(
        self, raw: bytes
    ) -> tuple[EmbeddingRequest, list[str | dict[str, Any]], list[EmbedderInput]]:
        body = decode_request(raw, EmbeddingRequest)
        if self.embedder is None or body.model not in self.model_ids():
            raise APIError(
                404,
                f"the model {body.model!r} cannot embed; use {EMBEDDING_MODEL!r}",
                param="model",
                code="model_not_found",
            )
        inputs: list[str | dict[str, Any]] = (
            [body.input] if isinstance(body.input, str) else list(body.input)
        )
        reader = PartReader(self.settings.media_policy, self.settings.media_limits)
        return body, inputs, reader.inputs(inputs)

    def embed(self, items: Sequence[EmbedderInput], cancelled: threading.Event) -> list[Any]:
        """Vectors of ``items``, one encoder batch at a time; stops when ``cancelled``."""
        assert self.embedder is not None
        vectors: list[Any] = []
        size = self.embedder.batch_size
        for start in range(0, len(items), size):
            if cancelled.is_set():
                break
            vectors += self.embedder.embed(items[start : start + size]).tolist()
        return vectors

    async def embeddings(self, request: Request) -> Response:
        deadline = time.monotonic() + self.settings.request_timeout_s
        prepare = _as_api_errors(self.prepare_embeddings)
        body, inputs, items = await run_in_threadpool(prepare, await request.body())
        vectors = await _wait(request, self.in_pool(partial(self.embed, items)), deadline)
        width = len(vectors[0])
        if body.dimensions is not None and body.dimensions != width:
            raise APIError(
                400, f"this model embeds into {width} dimensions only", param="dimensions"
            )
        tokenizer = default_tokenizer()
        tokens = sum(
            min(len(tokenizer.encode(x)) + 2, CONTEXT_LENGTH) if isinstance(x, str) else 1
            for x in inputs
        )
        result = embedding_response(vectors, body.model, body.encoding_format, tokens)
        return Response(_json(result), media_type="application/json")

    # -- helpers -------------------------------------------------------------------------

    async def in_pool(self, work: Callable[[threading.Event], T]) -> T:
        """``work(cancelled)`` in the media pool; cancelling the await (deadline, client gone,
        shutdown) sets ``cancelled`` so that the work stops at its next item or batch."""
        cancelled = threading.Event()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.media_pool, _as_api_errors(work), cancelled)
        finally:
            cancelled.set()


async def _next(chunks: AsyncIterator[StreamChunk], deadline: float) -> StreamChunk:
    """The next chunk, with the request's deadline and engine errors as :class:`APIError`."""
    try:
        async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
            return await anext(chunks)
    except TimeoutError:
        raise _timeout() from None
    except (MediaError, ValueError) as error:
        raise APIError(400, str(error), code="invalid_media") from error


async def _wait(request: Request, work: Awaitable[T], deadline: float) -> T:
    """``work``'s result, unless the deadline passes (504) or the client leaves (499) first;
    either way ``work`` is cancelled."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        remaining = max(deadline - time.monotonic(), 0)
        await asyncio.wait({task, gone}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        if gone.done():
            raise APIError(499, "the client closed the request", code="client_closed_request")
        raise _timeout()
    finally:
        gone.cancel()
        if not task.done():
            # Let the cancelled work unwind before returning: it may be inside an async
            # generator that the caller closes next ("aclose(): ... already running").
            task.cancel()
            await asyncio.wait({task})


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _timeout() -> APIError:
    return APIError(504, "the request did not finish in time", type="timeout_error", code="timeout")


def _media_error(where: str, error: Exception) -> APIError:
    """A 400 naming the part ``where`` for a media item that cannot be used."""
    if isinstance(error, MediaError):
        text = str(error) if error.source == where else f"{where}: {error.problem}"
        if error.fix and error.source != where:
            text += f" ({error.fix})"
    else:
        text = f"{where}: {error}"
    return APIError(400, text, param=where, code="invalid_media")


def _as_api_errors(function: Callable[..., T]) -> Callable[..., T]:
    """Wraps a handler step so that user errors (bad media, bad parameters) become 400s."""

    def wrapped(*args: Any) -> T:
        try:
            return function(*args)
        except APIError:
            raise
        except MediaError as error:
            raise _media_error(error.source, error) from error
        except ValueError as error:
            raise APIError(400, str(error)) from error

    return wrapped


def create_app(
    engine: GenerationEngine,
    settings: ServerSettings,
    embedder: MediaEmbedder | None = None,
) -> FastAPI:
    """The ASGI app serving ``engine`` (and ``embedder`` on ``/v1/embeddings``)."""
    service = _Service(engine, settings, embedder)
    app = FastAPI(title="PandaGPT", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem.get("loc", ())[1:])
        message = f"{where or 'body'}: {problem.get('msg')}"
        return _error_response(APIError(400, message, param=where or None))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error_response(APIError(error.status_code, str(error.detail)))

    @app.get("/health")
    async def health() -> JSONResponse:
        problem = await service.monitor.problem()
        if problem is not None:
            body = {"status": "unavailable", "model": service.model_name, "problem": problem}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ok", "model": service.model_name})

    api = APIRouter(prefix="/v1")  # the key is checked by RequestGuard, before the body

    @api.get("/models")
    async def models() -> dict[str, Any]:
        data = [model_card(model_id, service.created) for model_id in service.model_ids()]
        return {"object": "list", "data": data}

    @api.get("/models/{model_id}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id not in service.model_ids():
            raise APIError(404, f"the model {model_id!r} does not exist", code="model_not_found")
        return model_card(model_id, service.created)

    @api.get("/stats")
    async def stats() -> dict[str, Any]:
        return engine.stats().to_dict()

    @api.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await service.chat(request)

    @api.post("/embeddings")
    async def create_embeddings(request: Request) -> Response:
        return await service.embeddings(request)

    app.include_router(api)
    app.add_middleware(RequestGuard, api_key=settings.api_key, max_body=settings.max_request_bytes)
    app.router.on_shutdown.append(service.close)
    return app


def app_for_bundle(
    bundle: str | os.PathLike[str],
    settings: ServerSettings | None = None,
    *,
    precision: PrecisionChoice = "auto",
    device: str = "auto",
    max_batch_size: int = 16,
    embeddings: bool = True,
) -> FastAPI:
    """Loads a bundle and returns the app serving it; the model id defaults to the bundle's
    manifest name, ``/v1/embeddings`` uses the bundle's ImageBind."""
    model = get_shared_model(bundle, precision=precision, device=device)
    settings = settings or ServerSettings()
    engine = GenerationEngine(model, max_batch_size=max_batch_size)
    embedder = None
    if embeddings:
        # The model's own ImageBind (and lock): the server holds one copy, not two.
        imagebind = model.imagebind
        checkpoint = model.imagebind_path or imagebind_checkpoint(bundle)
        embedder = MediaEmbedder(shared_encoder(checkpoint, imagebind.device, imagebind.dtype))
    return create_app(engine, settings, embedder)


@contextmanager
def serve_in_subprocess(
    bundle: str | os.PathLike[str], *options: str, startup_timeout_s: float = 300.0
) -> Iterator[str]:
    """Runs ``pandagpt serve`` on a free loopback port in a child process and yields its base
    URL once ``/health`` answers; the server stops when the block ends.

    A separate process keeps the server's threads and the caller's apart, as in production
    (tests, benchmarks, a notebook talking to the server through ``ChatOpenAI``).
    ``options`` are extra ``pandagpt serve`` flags.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # This interpreter's package, not whichever ``pandagpt`` script comes first on PATH.
    cli = [sys.executable, "-m", "langchain_pandagpt.cli"]
    command = [*cli, "serve", "--bundle", os.fspath(bundle), "--port", str(port), *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not _healthy(base):
            if process.poll() is not None:
                output = process.stdout.read() if process.stdout else ""
                raise RuntimeError(f"pandagpt serve exited with {process.returncode}:\n{output}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"pandagpt serve did not answer within {startup_timeout_s} s")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False
