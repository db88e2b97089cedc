"""An OpenAI-compatible HTTP server for PandaGPT (FastAPI + uvicorn).

Endpoints: ``POST /v1/chat/completions`` (streaming or not), ``POST /v1/embeddings``
(ImageBind, text and media), ``GET /v1/models``, ``GET /v1/stats`` (engine batching counters)
and ``GET /health``. Any OpenAI client works, e.g. ``ChatOpenAI(base_url=...)``.

Sampling defaults follow OpenAI (``temperature`` 1, ``top_p`` 1); ``max_tokens`` defaults to
the server's ``default_max_tokens``, capped by the room left in the context.

Tools, ``tool_choice`` and ``response_format`` (JSON answers under the same always-valid
grammar as ``ChatPandaGPT``) and the parameters refused with a 400: see :mod:`.tools`.

Concurrency: the :class:`~langchain_pandagpt.generation.engine.GenerationEngine` decodes in its own
thread and batches requests that arrive together; the event loop only queues requests and
forwards text deltas, so concurrent requests share batched forward passes instead of waiting
for each other. Each open request holds one helper thread that waits on the engine.

Media parts, besides OpenAI's ``image_url`` and ``input_audio`` (see :mod:`.media_parts`):
``{"type": "input_<m>", "input_<m>": {"data": <base64>, "format": <ext>}}`` and
``{"type": "<m>_url", "<m>_url": {"url": <data: URL>}}`` for every modality ``<m>`` in image,
audio, video, thermal, depth and imu, and ``{"type": "file", "file": {"file_data": <data:
URL>, "filename": ..., "modality": ...}}`` (modality optional: it is guessed from the MIME type
and name hints such as ``room.depth.png``). Requests can never read files on the server or
fetch URLs unless the server was started with ``allow_local_files`` / ``allow_remote_media``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
from langchain_pandagpt.media.policy import MediaPolicy
from langchain_pandagpt.model.bundle import PrecisionChoice, imagebind_checkpoint
from langchain_pandagpt.model.embedder import MediaEmbedder
from langchain_pandagpt.serving.parts import embedding_inputs, request_messages
from langchain_pandagpt.serving.protocol import (
    APIError,
    ChatCompletionRequest,
    EmbeddingRequest,
    completion_chunk,
    completion_response,
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

#: Model id under which ``/v1/embeddings`` serves the bundle's ImageBind.
EMBEDDING_MODEL = "imagebind"


@dataclass(frozen=True)
class ServerSettings:
    """What the server accepts. ``model_name`` is the id clients pass as ``model`` (default:
    the bundle's manifest name).

    ``max_request_bytes`` caps a request body (media arrive base64-encoded inside it);
    ``request_timeout_s`` bounds a whole generation; ``default_max_tokens`` applies when a
    request gives no ``max_tokens``; ``max_open_requests`` bounds concurrently open
    generations (each holds one waiting thread). ``api_key``: when set, every ``/v1`` request
    needs ``Authorization: Bearer <key>``.
    """

    model_name: str | None = None
    api_key: str | None = None
    max_request_bytes: int = 64 * 2**20
    request_timeout_s: float = 600.0
    default_max_tokens: int = 256
    max_open_requests: int = 256
    allow_local_files: bool = False
    allow_remote_media: bool = False

    @property
    def media_policy(self) -> MediaPolicy:
        return MediaPolicy(
            allow_local_files=self.allow_local_files, allow_remote_media=self.allow_remote_media
        )


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.to_dict(), status_code=error.status)


class _BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, whether or not the client sent a
    ``Content-Length``: the body is read (at most ``limit`` bytes) before the app sees it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = _error_response(
            APIError(
                413, f"request body is over the {self.limit}-byte limit", code="request_too_large"
            )
        )
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await too_big(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                await too_big(scope, receive, send)
                return
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


async def _chunks(
    handle: RequestHandle, executor: ThreadPoolExecutor
) -> AsyncGenerator[StreamChunk, None]:
    """The engine's text deltas as an async iterator; leaving early cancels the request.

    One executor thread blocks on the engine's queue and hands each chunk to the event loop,
    so the loop itself never waits on the engine.
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
                deliver(chunk)
        except BaseException as error:  # delivered to the request, which re-raises it
            deliver(error)

    loop.run_in_executor(executor, pump)
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
        self.waiters = ThreadPoolExecutor(settings.max_open_requests, "pandagpt-wait")

    def model_ids(self) -> list[str]:
        ids = [self.model_name]
        return [*ids, EMBEDDING_MODEL] if self.embedder is not None else ids

    def check_key(self, request: Request) -> None:
        expected = self.settings.api_key
        if not expected:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected.encode()):
            raise APIError(
                401,
                "invalid or missing API key: send 'Authorization: Bearer <key>'",
                type="authentication_error",
                code="invalid_api_key",
            )

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

    def start(self, body: ChatCompletionRequest) -> tuple[RequestHandle, AnswerFormat]:
        """Checks the request and queues it in the engine (in a worker thread: it decodes
        base64 media and tokenizes); returns its handle and answer format."""
        if body.model != self.model_name:
            raise APIError(
                404,
                f"the model {body.model!r} does not exist; this server has {self.model_name!r}",
                param="model",
                code="model_not_found",
            )
        check_supported(body)
        answer = request_answer_format(body)
        turns = request_messages(body.messages, self.settings.media_policy)
        turns = with_tool_history(body.messages, turns)
        if answer.instructions:
            turns = with_instructions(turns, answer.instructions, self.engine.settings.fidelity)
        return self.engine.submit(turns, self.sampling(body, turns, answer)), answer

    async def chat(self, body: ChatCompletionRequest) -> Response:
        handle, answer = await run_in_threadpool(_as_api_errors(self.start), body)
        chunks = _chunks(handle, self.waiters)
        deadline = time.monotonic() + self.settings.request_timeout_s
        completion_id = new_completion_id()
        if body.stream:
            try:  # the first chunk follows media encoding: bad media still get a plain 400
                first = await _next(chunks, deadline)
            except BaseException:
                await chunks.aclose()
                raise
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            deltas = DeltaStream(answer)
            events = self._events(completion_id, first, chunks, deltas, deadline, include_usage)
            return StreamingResponse(events, media_type="text/event-stream")
        async with aclosing(chunks):
            text: list[str] = []
            while True:
                chunk = await _next(chunks, deadline)
                text.append(chunk.text)
                if chunk.finish_reason is not None:
                    break
        assert chunk.usage is not None
        message, finish_reason = completion_message("".join(text), answer, chunk.finish_reason)
        return JSONResponse(
            completion_response(completion_id, body.model, message, finish_reason, chunk.usage)
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
        start arrives as an ``error`` event."""
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
        finally:
            await chunks.aclose()
        yield b"data: [DONE]\n\n"

    # -- embeddings ----------------------------------------------------------------------

    def embed(self, body: EmbeddingRequest) -> dict[str, Any]:
        if self.embedder is None or body.model not in self.model_ids():
            raise APIError(
                404,
                f"the model {body.model!r} cannot embed; use {EMBEDDING_MODEL!r}",
                param="model",
                code="model_not_found",
            )
        inputs = [body.input] if isinstance(body.input, str) else body.input
        items = embedding_inputs(inputs, self.settings.media_policy)
        vectors: list[list[float]] = self.embedder.embed(items).tolist()
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
        return embedding_response(vectors, body.model, body.encoding_format, tokens)


async def _next(chunks: AsyncIterator[StreamChunk], deadline: float) -> StreamChunk:
    """The next chunk, with the request's deadline and engine errors as :class:`APIError`."""
    try:
        async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
            return await anext(chunks)
    except TimeoutError:
        raise APIError(
            504, "generation did not finish in time", type="timeout_error", code="timeout"
        ) from None
    except (MediaError, ValueError) as error:
        raise APIError(400, str(error), code="invalid_media") from error


def _as_api_errors(function: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps a handler step so that user errors (bad media, bad parameters) become 400s."""

    def wrapped(*args: Any) -> Any:
        try:
            return function(*args)
        except APIError:
            raise
        except MediaError as error:
            raise APIError(400, str(error), code="invalid_media") from error
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
        if problem.get("type") == "json_invalid":
            message, where = "the request body is not valid JSON", ""
        else:
            message = f"{where or 'body'}: {problem.get('msg')}"
        return _error_response(APIError(400, message, param=where or None))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error_response(APIError(error.status_code, str(error.detail)))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": service.model_name}

    api = APIRouter(prefix="/v1", dependencies=[Depends(service.check_key)])

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
    async def chat_completions(body: ChatCompletionRequest) -> Response:
        return await service.chat(body)

    @api.post("/embeddings")
    async def create_embeddings(body: EmbeddingRequest) -> Response:
        result = await run_in_threadpool(_as_api_errors(service.embed), body)
        return Response(_json(result), media_type="application/json")

    app.include_router(api)
    app.add_middleware(_BodyLimit, limit=settings.max_request_bytes)
    app.router.on_shutdown.append(lambda: service.waiters.shutdown(wait=False, cancel_futures=True))
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
