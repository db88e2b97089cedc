"""ChatPandaGPT: PandaGPT (ImageBind + Vicuna/LLaMA with LoRA) as a LangChain chat model.

Messages become a PandaGPT conversation as :mod:`~langchain_pandagpt.chat_messages` describes.

Tool calling: the model writes one call as ``{"name": <tool>, "arguments": {...}}``, decoded
under a grammar built from the bound tools' schemas (``structured/``), so every call is
well formed and every argument set validates. ``tool_choice`` ``"any"``/``"required"``/``True``
forces a call to one of the tools and a tool name forces that tool. ``"auto"`` (the default)
lets the model choose: an answer whose first non-space character is ``{`` is a tool call, any
other answer is plain text. ``"none"`` answers in text. Calls stream as ``tool_call_chunks``.

Structured output (:meth:`ChatPandaGPT.with_structured_output`): ``json_schema`` constrains the
answer to the schema; ``function_calling`` forces a call of a tool made from the schema;
``json_mode`` constrains the answer to a JSON object (to the schema too when one is given, so the
parser always gets the keys it needs) without adding instructions to the prompt. JSON answers
ignore stop sequences and are given at least the tokens their shortest valid form needs.

``batch``/``abatch`` of several inputs run as one batched generation in the engine (their
results are computed up front and handed to each invocation), so callbacks and tracing still
see one run per input.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from collections.abc import (
    AsyncIterator,
    Callable,
    Generator,
    Hashable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, cast

from langchain_core.caches import BaseCache
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import (
    BaseChatModel,
    LangSmithParams,
    LanguageModelInput,
    ModelProfile,
)
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    InvalidToolCall,
    ToolCall,
    UsageMetadata,
)
from langchain_core.messages.ai import InputTokenDetails
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.output_parsers import (
    JsonOutputKeyToolsParser,
    JsonOutputParser,
    PydanticOutputParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from langchain_pandagpt.chat_messages import messages_to_conversation
from langchain_pandagpt.conversation import MEDIA_MODALITIES, Message
from langchain_pandagpt.errors import CheckpointError, DownloadNotAllowedError, MediaError
from langchain_pandagpt.generation.constrained import answer_sampling
from langchain_pandagpt.generation.engine import (
    GenerationEngine,
    GenerationResult,
    SamplingParams,
    Usage,
)
from langchain_pandagpt.generation.prefetch import Prefetch, conversation_key, run_in_thread
from langchain_pandagpt.generation.prompt import PromptSettings, build_prompt
from langchain_pandagpt.generation.registry import get_shared_model, shared_engine, shared_grammar
from langchain_pandagpt.media.policy import (
    DEFAULT_REMOTE_MAX_BYTES,
    DEFAULT_REMOTE_TIMEOUT_S,
    MediaPolicy,
)
from langchain_pandagpt.model.bundle import PrecisionChoice, check_precision, resolve_device
from langchain_pandagpt.model.manifest import BundleManifest
from langchain_pandagpt.structured.formats import (
    AnswerFormat,
    ParsedAnswer,
    answer_format,
    normalize_tool_choice,
    parse_answer,
    with_instructions,
)
from langchain_pandagpt.structured.streaming import AnswerDelta, AnswerStream, TextDelta

PROVIDER = "pandagpt"
#: Environment variable naming the default bundle (as for the ``pandagpt`` CLI).
BUNDLE_ENV = "PANDAGPT_BUNDLE"

# --------------------------------------------------------------------------------------------
# Framework-free answers (structured/) -> LangChain messages
# --------------------------------------------------------------------------------------------


def _message_fields(
    parsed: ParsedAnswer,
) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """LangChain content, tool calls and invalid tool calls of a parsed answer."""
    calls = [tool_call(name=c.name, args=c.arguments, id=c.id) for c in parsed.tool_calls]
    invalid = [
        invalid_tool_call(args=c.text, id=c.id, error=c.error) for c in parsed.invalid_tool_calls
    ]
    return parsed.content, calls, invalid


def _chunk(delta: AnswerDelta) -> AIMessageChunk:
    """The message chunk of one streamed piece of an answer."""
    if isinstance(delta, TextDelta):
        return AIMessageChunk(content=delta.text)
    piece = tool_call_chunk(name=delta.name, args=delta.arguments, id=delta.id, index=delta.index)
    return AIMessageChunk(content="", tool_call_chunks=[piece])


def _usage_metadata(usage: Usage) -> UsageMetadata:
    return UsageMetadata(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        input_token_details=InputTokenDetails(cache_read=usage.cached_tokens),
    )


# --------------------------------------------------------------------------------------------
# Shared engines, grammars and batch prefetching
# --------------------------------------------------------------------------------------------


def _resolve_bundle(model: str, allow_download: bool) -> Path:
    """A local bundle directory for ``model``: a path, or a Hugging Face repo holding one."""
    path = Path(model).expanduser()
    if path.exists() or model.count("/") != 1:
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model, local_files_only=not allow_download))
    except LocalEntryNotFoundError as exc:
        raise DownloadNotAllowedError(
            f"{model} is neither a local bundle directory nor a Hugging Face repo in the "
            "cache; check the path, or pass allow_download=True to fetch it from the Hub"
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"{model}: cannot fetch the bundle ({exc})") from exc


@dataclass
class _Prepared:
    """One request, ready for the engine."""

    conversation: list[Message]
    params: SamplingParams
    settings: PromptSettings
    answer: AnswerFormat


_PREFETCH: contextvars.ContextVar[Prefetch | None] = contextvars.ContextVar(
    "pandagpt_batch_prefetch", default=None
)

_END = object()


def _default_bundle() -> str:
    return os.environ.get(BUNDLE_ENV, "")


class ChatPandaGPT(BaseChatModel):
    """PandaGPT as a chat model: text plus image, audio, video, depth, thermal and IMU input.

    Weights load on first use and are shared, with one generation engine, by every instance
    that names the same bundle, precision and device, so building many instances is free.

    Example:
        .. code-block:: python

            from langchain_core.messages import HumanMessage
            from langchain_pandagpt.chat_models import ChatPandaGPT
            from langchain_pandagpt.content_blocks import create_depth_block

            llm = ChatPandaGPT(model="/models/pandagpt-7b", device="cuda", max_tokens=128)
            llm.invoke(
                [
                    HumanMessage(
                        content_blocks=[
                            {"type": "image", "url": "file:///data/kitchen.jpg"},
                            create_depth_block("/data/kitchen_depth.npy"),
                            {"type": "text", "text": "How far is the table?"},
                        ]
                    )
                ]
            )

    Media blocks take ``base64`` (+ ``mime_type``), ``data:`` URLs, local files
    (``url="file:///..."`` or a plain path in ``url``; regular files only, inside
    ``media_root`` when set; refused when ``allow_local_files`` is False, as a server should
    set it) and ``http(s)`` URLs (fetched only when ``allow_remote_media`` is True, from
    public addresses or ``remote_allow_hosts``, within ``remote_media_max_bytes`` and
    ``remote_media_timeout``). OpenAI ``image_url``/``input_audio`` and LangChain v0
    ``source_type`` blocks are accepted too.
    """

    model_config = ConfigDict(populate_by_name=True)

    model: str = Field(default_factory=_default_bundle)
    """Bundle directory (with ``pandagpt.json``) or Hugging Face repo id of a bundle; default:
    the ``PANDAGPT_BUNDLE`` environment variable."""
    precision: PrecisionChoice = "auto"
    """auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16 (whole model), or int8/nf4 (LLM
    quantized with bitsandbytes)."""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (CUDA when available)."""
    allow_download: bool = False
    """Fetch the bundle (hub id) or its parts when they are not cached."""
    temperature: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    """0 decodes greedily."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int = Field(default=0, ge=0)
    """0 disables top-k."""
    max_tokens: int = Field(default=256, ge=1)
    """Most tokens to generate (JSON answers get at least what their shortest form needs)."""
    seed: int | None = None
    stop: list[str] | None = None
    """Stop sequences for text answers (per-call ``stop`` wins)."""
    fidelity: Literal["default", "reference"] | None = None
    """Prompt template (``prompt.py``); None: the bundle's."""
    media_fusion: Literal["sum", "sequence"] | None = None
    """How the media of one turn become positions; None: the bundle's."""
    allow_local_files: bool = True
    allow_remote_media: bool = False
    remote_media_max_bytes: int = Field(default=DEFAULT_REMOTE_MAX_BYTES, ge=1)
    remote_media_timeout: float = Field(default=DEFAULT_REMOTE_TIMEOUT_S, gt=0)
    """Seconds for a whole remote fetch (redirects and body included)."""
    media_root: Path | None = None
    """Confine local files to this folder (relative paths are relative to it)."""
    remote_allow_hosts: tuple[str, ...] = ()
    """Hosts and networks (``"10.0.0.0/8"``) remote fetches may reach although not public."""
    streaming: bool = False
    """Generate through ``_stream`` even in ``invoke`` (callbacks then see every token)."""

    #: Media kinds this model reads (``image``/``video``/``audio`` blocks, ``file`` blocks with
    #: ``extras={"modality": "depth" | "thermal" | "imu"}``).
    supported_modalities: ClassVar[tuple[str, ...]] = MEDIA_MODALITIES

    _engine: GenerationEngine | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _set_pandagpt_version(self) -> Self:
        self._add_version("langchain-pandagpt", _package_version())
        return self

    @model_validator(mode="after")
    def _check_settings(self) -> Self:
        """Fail at construction, not at the first ``invoke``: the bundle must exist (or look
        like a Hub id), and the precision and device must be usable here. Loading stays lazy."""
        check_precision(self.precision)
        resolve_device(self.device)
        self._media_policy  # noqa: B018 -- media_root must exist, allow-list entries parse
        if not self.model:
            raise ValueError(
                "no bundle: pass model='path/to/bundle' or set the PANDAGPT_BUNDLE environment "
                "variable (`pandagpt create-tiny-checkpoint DIR` makes a tiny one to try)"
            )
        path = Path(self.model).expanduser()
        if path.exists() or self.model.count("/") != 1:
            BundleManifest.read(path)  # CheckpointError naming the missing/invalid manifest
        return self

    # -- LangChain metadata ---------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "pandagpt-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        names = ("model", "precision", "device", "temperature", "top_p", "top_k", "max_tokens")
        extra = ("seed", "stop", "fidelity", "media_fusion")
        return {name: getattr(self, name) for name in (*names, *extra)}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider=PROVIDER,
            ls_model_name=kwargs.get("model", self.model),
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        if stop := stop or self.stop:
            params["ls_stop"] = stop
        return params

    def _resolve_model_profile(self) -> ModelProfile | None:
        return ModelProfile(
            text_inputs=True,
            image_inputs=True,
            image_url_inputs=self.allow_remote_media,
            audio_inputs=True,
            video_inputs=True,
            pdf_inputs=False,
            image_tool_message=True,
            text_outputs=True,
            tool_calling=True,
            tool_choice=True,
            tool_call_streaming=True,
            structured_output=True,
        )

    # -- the shared engine ----------------------------------------------------------------------

    @property
    def engine(self) -> GenerationEngine:
        """The process-wide engine of this bundle (loads the weights on first use)."""
        if self._engine is None:
            model = get_shared_model(
                _resolve_bundle(self.model, self.allow_download),
                precision=self.precision,
                device=self.device,
                allow_download=self.allow_download,
            )
            self._engine = shared_engine(model)
        return self._engine

    @property
    def _media_policy(self) -> MediaPolicy:
        return MediaPolicy(
            allow_local_files=self.allow_local_files,
            allow_remote_media=self.allow_remote_media,
            remote_media_max_bytes=self.remote_media_max_bytes,
            remote_media_timeout=self.remote_media_timeout,
            media_root=self.media_root,
            remote_allow_hosts=self.remote_allow_hosts,
        )

    def _settings(self) -> PromptSettings:
        default = self.engine.settings
        return PromptSettings(
            fidelity=self.fidelity or default.fidelity,
            media_fusion=self.media_fusion or default.media_fusion,
        )

    # -- requests -------------------------------------------------------------------------------

    def _prepare(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: Mapping[str, Any]
    ) -> _Prepared:
        """Conversation, sampling parameters and answer format of one call."""
        if kwargs.get("model", self.model) != self.model:
            raise ValueError(
                f"ChatPandaGPT serves one bundle ({self.model}); create another instance for "
                f"{kwargs['model']}"
            )
        answer = answer_format(
            kwargs.get("tools"), kwargs.get("tool_choice"), kwargs.get("response_format")
        )
        settings = self._settings()
        conversation = self._conversation(messages, answer, settings)
        self._check_media(conversation)
        params = self._sampling(answer, stop, kwargs, settings)
        return _Prepared(conversation, params, settings, answer)

    def _conversation(
        self, messages: Sequence[BaseMessage], answer: AnswerFormat, settings: PromptSettings
    ) -> list[Message]:
        conversation = messages_to_conversation(messages, self._media_policy)
        if answer.instructions:
            conversation = with_instructions(conversation, answer.instructions, settings.fidelity)
        return conversation

    def _check_media(self, conversation: Sequence[Message]) -> None:
        """Encode every media item now (the engine reuses the cached embedding), so undecodable
        media fails in the caller with the name of its content block."""
        model = self.engine.model
        for item in (item for message in conversation for item in message.media):
            try:
                model.embed_media([item])
            except (ValueError, OSError) as exc:
                problem = exc.problem if isinstance(exc, MediaError) else str(exc)
                fix = exc.fix if isinstance(exc, MediaError) else None
                raise MediaError(item.describe(), problem, fix) from exc

    def _sampling(
        self,
        answer: AnswerFormat,
        stop: list[str] | None,
        kwargs: Mapping[str, Any],
        settings: PromptSettings,
    ) -> SamplingParams:
        model = self.engine.model
        return answer_sampling(
            answer,
            model.tokenizer,
            model.vocab_size,
            settings.fidelity,
            max_tokens=int(kwargs.get("max_tokens", self.max_tokens)),
            stop=stop or self.stop or (),
            temperature=kwargs.get("temperature", self.temperature),
            top_p=kwargs.get("top_p", self.top_p),
            top_k=kwargs.get("top_k", self.top_k),
            seed=kwargs.get("seed", self.seed),
        )

    def _message(self, result: GenerationResult, answer: AnswerFormat) -> AIMessage:
        content, calls, invalid = _message_fields(parse_answer(result.text, answer))
        return AIMessage(
            content=content,
            tool_calls=calls,
            invalid_tool_calls=invalid,
            usage_metadata=_usage_metadata(result.usage),
            response_metadata=self._response_metadata(result.finish_reason),
        )

    def _response_metadata(self, finish_reason: str) -> dict[str, Any]:
        return {
            "model_name": self.model,
            "model_provider": PROVIDER,
            "finish_reason": finish_reason,
        }

    # -- generation -----------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        prepared = self._prepare(messages, stop, kwargs)
        result = self._claim(prepared) or self.engine.generate(
            prepared.conversation, prepared.params, settings=prepared.settings
        )
        return ChatResult(
            generations=[ChatGeneration(message=self._message(result, prepared.answer))]
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Generator[ChatGenerationChunk, None, None]:
        prepared = self._prepare(messages, stop, kwargs)
        result = self._claim(prepared)
        if result is not None:
            pieces: Iterator[Any] = iter([result])
        else:
            pieces = self.engine.stream(
                prepared.conversation, prepared.params, settings=prepared.settings
            )
        parser = AnswerStream(prepared.answer)
        for piece in pieces:
            messages_out = [_chunk(delta) for delta in parser.feed(piece.text)]
            if piece.finish_reason is not None:
                messages_out += [
                    *(_chunk(delta) for delta in parser.finish()),
                    self._last_chunk(piece.usage, piece.finish_reason),
                ]
            for message in messages_out:
                chunk = ChatGenerationChunk(message=message)
                if run_manager is not None:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    def _last_chunk(self, usage: Usage, finish_reason: str) -> AIMessageChunk:
        return AIMessageChunk(
            content="",
            usage_metadata=_usage_metadata(usage),
            response_metadata=self._response_metadata(finish_reason),
            chunk_position="last",
        )

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        """Runs :meth:`_stream` in a worker thread and hands chunks over through an asyncio
        queue, so neither media decoding nor decoding steps ever block the event loop."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        abandoned = threading.Event()

        def publish(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                abandoned.set()

        def produce() -> None:
            stream = self._stream(messages, stop, **kwargs)
            try:
                for chunk in stream:
                    if abandoned.is_set():
                        break
                    publish(chunk)
            except BaseException as exc:
                publish(exc)
            finally:
                stream.close()  # cancels the engine request when abandoned
                publish(_END)

        context = contextvars.copy_context()
        worker = threading.Thread(target=context.run, args=(produce,), daemon=True)
        worker.start()
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                chunk = cast(ChatGenerationChunk, item)
                if run_manager is not None:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        finally:
            abandoned.set()

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return await asyncio.to_thread(self._generate, messages, stop, None, **kwargs)

    # -- batching -------------------------------------------------------------------------------

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """Like ``Runnable.batch``, with all inputs generated in one engine batch."""
        token = _PREFETCH.set(self._prefetch(inputs, kwargs))
        try:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        finally:
            _PREFETCH.reset(token)

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """Like ``Runnable.abatch``, with all inputs generated in one engine batch."""
        prefetch = await asyncio.to_thread(self._prefetch, inputs, kwargs)
        token = _PREFETCH.set(prefetch)
        try:
            return await super().abatch(
                inputs, config, return_exceptions=return_exceptions, **kwargs
            )
        finally:
            _PREFETCH.reset(token)

    def _prefetch(
        self, inputs: Sequence[LanguageModelInput], kwargs: Mapping[str, Any]
    ) -> Prefetch | None:
        """Start generating every input in one engine batch (None when not worth it)."""
        if len(inputs) < 2 or self._cache_active():
            return None
        stop = kwargs.get("stop")
        prepared: list[_Prepared] = []
        for value in inputs:
            try:
                messages = self._convert_input(value).to_messages()
                prepared.append(self._prepare(messages, stop, kwargs))
            except Exception:  # this input fails again in its own invocation
                continue
        if len(prepared) < 2:
            return None
        engine = self.engine
        results = run_in_thread(
            lambda: engine.generate_batch(
                [p.conversation for p in prepared],
                [p.params for p in prepared],
                settings=prepared[0].settings,
            )
        )
        return Prefetch([self._request_key(p) for p in prepared], results)

    def _cache_active(self) -> bool:
        if isinstance(self.cache, BaseCache):
            return True
        return self.cache is not False and get_llm_cache() is not None

    def _claim(self, prepared: _Prepared) -> GenerationResult | None:
        prefetch = _PREFETCH.get()
        return None if prefetch is None else prefetch.claim(self._request_key(prepared))

    @staticmethod
    def _request_key(prepared: _Prepared) -> Hashable:
        params = prepared.params
        sampling = (
            params.max_new_tokens,
            params.temperature,
            params.top_p,
            params.top_k,
            params.seed,
            params.stop,
        )
        return (
            conversation_key(prepared.conversation),
            sampling,
            prepared.answer.key,
            prepared.settings,
        )

    # -- tools and structured output ------------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: dict[str, Any] | str | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools; calls are grammar-constrained JSON (see the module docstring).

        ``tool_choice``: ``"auto"`` (default), ``"any"``/``"required"``/``True``, ``"none"``,
        or a tool name (also in OpenAI's ``{"type": "function", "function": {"name": ...}}``
        form). ``response_format`` (OpenAI form) may be bound alongside.
        """
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        names = [tool["function"]["name"] for tool in formatted]
        choice = normalize_tool_choice(tool_choice, names)
        answer = answer_format(formatted, choice, kwargs.get("response_format"))
        if answer.schema is not None:
            shared_grammar(answer.schema)  # unsupported schemas fail here, not at the first call
        return super().bind(tools=formatted, tool_choice=choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | Any]:
        """Answers parsed into ``schema`` (pydantic model, TypedDict or JSON schema).

        Every method decodes under a grammar, so the answer always parses: ``json_schema``
        (default) constrains the answer to the schema, ``function_calling`` forces a tool call
        whose arguments follow it, ``json_mode`` asks for any JSON object (following
        ``schema`` when one is given) and leaves the instructions to your prompt. ``strict``
        is accepted for compatibility: decoding is always strict.
        """
        if kwargs:
            raise ValueError(f"unsupported arguments: {', '.join(sorted(kwargs))}")
        if schema is None and method != "json_mode":
            raise ValueError(f"method={method!r} needs a schema")
        is_model = isinstance(schema, type) and is_basemodel_subclass(schema)
        tracing = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
        llm: Runnable[LanguageModelInput, Any]
        if method == "function_calling":
            assert schema is not None
            name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools([schema], tool_choice=name, ls_structured_output_format=tracing)
            parser: Runnable[Any, Any] = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
                if is_model
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
        elif method in ("json_schema", "json_mode"):
            json_schema = None if schema is None else convert_to_json_schema(schema)
            response_format = _response_format(method, json_schema)
            shared_grammar(json_schema or {"type": "object"})  # unsupported schemas fail here
            extra = {"ls_structured_output_format": tracing} if schema is not None else {}
            llm = self.bind(response_format=response_format, **extra)
            parser = (
                PydanticOutputParser(pydantic_object=cast(Any, schema))
                if is_model
                else JsonOutputParser()
            )
        else:
            raise ValueError(
                f"method must be 'json_schema', 'function_calling' or 'json_mode', not {method!r}"
            )
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        fallback = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks(
            [fallback], exception_key="parsing_error"
        )

    # -- token counting -------------------------------------------------------------------------

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` with the model's own tokenizer (no BOS)."""
        return list(self.engine.model.tokenizer.encode(text, add_special_tokens=False))

    def get_num_tokens_from_messages(
        self,
        messages: list[BaseMessage],
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool] | None = None,
    ) -> int:
        """Prompt positions of ``messages`` (with the tool instructions of ``tools``), media
        counted as the positions they take, BOS and template strings included."""
        formatted = [convert_to_openai_tool(tool) for tool in tools or ()]
        answer = answer_format(formatted or None, "auto", None)
        settings = self._settings()
        conversation = self._conversation(messages, answer, settings)
        model = self.engine.model
        turns = [message for message in conversation if message.role != "system"]
        if not turns:
            system = "\n".join(message.text for message in conversation)
            text = f"{system}\n" if conversation else ""
            return 1 + len(model.tokenizer.encode(text, add_special_tokens=False))
        layout = build_prompt(
            conversation,
            model.tokenizer,
            bos_token_id=model.bos_token_id,
            settings=settings,
            add_generation_prompt=turns[-1].role == "human",
        )
        return layout.num_positions


def _response_format(method: str, json_schema: dict[str, Any] | None) -> dict[str, Any]:
    """The OpenAI-style ``response_format`` of a structured-output method."""
    if method == "json_mode":
        return {"type": "json_object", **({"schema": json_schema} if json_schema else {})}
    assert json_schema is not None
    name = str(json_schema.get("title") or "response")
    return {"type": "json_schema", "json_schema": {"name": name, "schema": json_schema}}


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("langchain-pandagpt")
    except PackageNotFoundError:
        return "0+unknown"
