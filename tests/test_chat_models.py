"""ChatPandaGPT on the tiny random bundle: the LangChain standard suites, every input form and
error, grammar-constrained structured output and tool calls, streaming, async, batching and
token accounting. Everything runs offline: the suites' downloads are served from local files."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any, Literal, Optional, cast

import av
import jsonschema
import numpy as np
import pytest
import soundfile
import torch
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from PIL import Image
from pydantic import BaseModel, Field, create_model
from typing_extensions import TypedDict

from langchain_pandagpt.chat_models import ChatPandaGPT, messages_to_conversation
from langchain_pandagpt.content_blocks import (
    MediaPolicy,
    create_depth_block,
    create_imu_block,
    create_thermal_block,
    is_sensor_block,
)
from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.generation import registry as registry_module
from langchain_pandagpt.media import remote

# Async standard tests need an event loop: mark the suites (the sync tests' warning is moot).
ASYNC_SUITE = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:The test <Function:pytest.PytestWarning"),
]
MAX_TOKENS = 16


# --------------------------------------------------------------------------------------------
# Media fixtures, written on the fly
# --------------------------------------------------------------------------------------------


def png_bytes(seed: int = 0, size: tuple[int, int] = (48, 40)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def wav_bytes(seed: int = 0, seconds: float = 0.5) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    soundfile.write(buffer, rng.uniform(-0.3, 0.3, int(16000 * seconds)), 16000, format="WAV")
    return buffer.getvalue()


def write_video(path: Path, frames: int = 6) -> Path:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(frames):
            image = np.full((48, 64, 3), 30 * index, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _FakeResponse:
    def __init__(self, content: bytes) -> None:
        self.content = content


def _offline_download(url: str, *args: Any, **kwargs: Any) -> _FakeResponse:
    """What the standard suites download, generated locally (PNG for images, WAV for audio)."""
    return _FakeResponse(wav_bytes() if url.endswith(".wav") else png_bytes())


@pytest.fixture
def offline_media(monkeypatch: pytest.MonkeyPatch) -> None:
    """Serves the suites' ``httpx.get`` downloads and the model's remote fetches locally."""
    monkeypatch.setattr("httpx.get", _offline_download)
    monkeypatch.setattr(
        remote,
        "fetch_remote_media",
        lambda url, max_bytes, timeout, **_: (_offline_download(url).content, None),
    )


# --------------------------------------------------------------------------------------------
# The LangChain standard suites
# --------------------------------------------------------------------------------------------


class TestChatPandaGPTUnit(ChatModelUnitTests):
    bundle: Path

    @pytest.fixture(autouse=True)
    def _bundle(self, tiny_bundle: Path) -> None:
        self.bundle = tiny_bundle

    @property
    def chat_model_class(self) -> type[ChatPandaGPT]:
        return ChatPandaGPT

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # The bundle is checked at construction; unit tests never load its weights.
        return {"model": str(self.bundle)}


class TestChatPandaGPTIntegration(ChatModelIntegrationTests):
    pytestmark = ASYNC_SUITE
    bundle: Path

    @pytest.fixture(autouse=True)
    def _bundle(self, tiny_bundle: Path, offline_media: None) -> None:
        self.bundle = tiny_bundle

    @property
    def chat_model_class(self) -> type[ChatPandaGPT]:
        return ChatPandaGPT

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "model": str(self.bundle),
            "device": "cpu",
            "max_tokens": MAX_TOKENS,
            "allow_remote_media": True,
        }

    @property
    def supports_image_inputs(self) -> bool:
        return True

    @property
    def supports_image_urls(self) -> bool:
        return True

    @property
    def supports_audio_inputs(self) -> bool:
        return True

    @property
    def supports_video_inputs(self) -> bool:
        return True

    @property
    def supports_image_tool_message(self) -> bool:
        return True

    @property
    def supports_anthropic_inputs(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False  # one bundle per instance: weights cannot be swapped per call

    @property
    def supported_usage_metadata_details(
        self,
    ) -> dict[Literal["invoke", "stream"], list[Any]]:
        return {"invoke": ["cache_read_input"], "stream": ["cache_read_input"]}

    def invoke_with_cache_read_input(self, *, stream: bool = False) -> AIMessage:
        """The second call of a conversation reuses the first one's KV cache."""
        llm = self.chat_model_class(**self.chat_model_params)
        prompt = "Describe the picture in detail. " * 4
        llm.invoke(prompt)
        if not stream:
            return llm.invoke(prompt)
        full: AIMessageChunk | None = None
        for chunk in llm.stream(prompt):
            full = chunk if full is None else full + chunk
        assert full is not None
        return AIMessage(content=full.content, usage_metadata=full.usage_metadata)

    @pytest.mark.xfail(reason="asserts args == {'input': 3}: a random model cannot infer 3")
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_tool_calling(self, model: BaseChatModel) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(reason="asserts args == {'input': 3}: a random model cannot infer 3")
    async def test_tool_calling_async(self, model: BaseChatModel) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.xfail(
        reason="leaves tool_choice at 'auto', and the random model answers in plain text; "
        "forced calls are covered by test_tool_choice and the tests below"
    )
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(
        reason="asserts the model copied the Chinese/Japanese name from the prompt into the "
        "arguments; a random model writes other (schema-valid) strings"
    )
    def test_unicode_tool_call_integration(
        self,
        model: BaseChatModel,
        *,
        tool_choice: str | None = None,
        force_tool_call: bool = True,
    ) -> None:
        super().test_unicode_tool_call_integration(
            model, tool_choice=tool_choice, force_tool_call=force_tool_call
        )


# --------------------------------------------------------------------------------------------
# Messages -> conversation (no model needed)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chat_media")
    (root / "photo.png").write_bytes(png_bytes(1))
    (root / "sound.wav").write_bytes(wav_bytes(1))
    np.save(root / "room.npy", np.random.default_rng(2).uniform(0.5, 4.0, (40, 48)))
    np.save(root / "walk.npy", np.random.default_rng(3).normal(size=(6, 2000)).astype(np.float32))
    write_video(root / "clip.mp4")
    return root


def only_media(message: BaseMessage, policy: MediaPolicy | None = None) -> Any:
    (converted,) = messages_to_conversation([message], policy)
    (item,) = converted.media
    return item


def test_roles_text_and_history_mapping() -> None:
    conversation = messages_to_conversation(
        [
            SystemMessage("Be brief."),
            HumanMessage([{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]),
            AIMessage(
                [{"type": "reasoning", "reasoning": "hidden"}, {"type": "text", "text": "Hello"}]
            ),
            ChatMessage(role="user", content="And now?"),
            ChatMessage(role="assistant", content="Now."),
            FunctionMessage(name="lookup", content="42"),
        ]
    )
    assert [(m.role, m.text) for m in conversation] == [
        ("system", "Be brief."),
        ("human", "Hi\nthere"),
        ("assistant", "Hello"),
        ("human", "And now?"),
        ("assistant", "Now."),
        ("human", "Tool result from lookup: 42"),
    ]


def test_plain_text_blocks_become_text() -> None:
    blocks = [
        {"type": "text-plain", "mime_type": "text/plain", "text": "abc"},
        {"type": "text-plain", "mime_type": "text/plain", "base64": b64("déf".encode())},
    ]
    (converted,) = messages_to_conversation([HumanMessage(content_blocks=blocks)])  # type: ignore[arg-type]
    assert converted.text == "abc\ndéf"


def test_history_that_opens_with_ai_gets_an_empty_human_turn() -> None:
    conversation = messages_to_conversation(
        [SystemMessage("s"), AIMessage("Welcome!"), HumanMessage("Hi")]
    )
    assert [(m.role, m.text) for m in conversation] == [
        ("system", "s"),
        ("human", ""),
        ("assistant", "Welcome!"),
        ("human", "Hi"),
    ]


def test_tool_calls_and_results_are_rendered_as_text() -> None:
    call = {"name": "my_adder_tool", "args": {"a": 1}, "id": "abc", "type": "tool_call"}
    conversation = messages_to_conversation(
        [
            HumanMessage("What is 1 + 2"),
            AIMessage("Let me add.", tool_calls=[call]),
            ToolMessage("Missing 'b'.", name="my_adder_tool", tool_call_id="abc", status="error"),
            ToolMessage("3", tool_call_id="xyz"),
        ]
    )
    assert conversation[1].text == 'Let me add.\n{"name":"my_adder_tool","arguments":{"a":1}}'
    assert conversation[2].text == "Tool error from my_adder_tool: Missing 'b'."
    assert conversation[3].text == "Tool result from xyz: 3"


def _input_forms(root: Path) -> list[tuple[str, dict[str, Any], str, bytes | str]]:
    """(name, block, expected modality, expected data) for every accepted input form."""
    png, wav = (root / "photo.png").read_bytes(), (root / "sound.wav").read_bytes()
    depth, imu = (root / "room.npy").read_bytes(), (root / "walk.npy").read_bytes()
    photo, clip = str(root / "photo.png"), str(root / "clip.mp4")
    png_url = f"data:image/png;base64,{b64(png)}"
    png_v1 = {"base64": b64(png), "mime_type": "image/png"}
    png_v0 = {"source_type": "base64", "data": b64(png), "mime_type": "image/png"}
    wav_v0 = {"source_type": "base64", "data": b64(wav), "mime_type": "audio/wav"}
    anthropic = {"source": {"type": "base64", "media_type": "image/png", "data": b64(png)}}
    openai_audio = {"input_audio": {"data": b64(wav), "format": "wav"}}
    return [
        ("v1 base64", {"type": "image", **png_v1}, "image", png),
        ("v1 file url", {"type": "image", "url": Path(photo).as_uri()}, "image", photo),
        ("v1 plain path", {"type": "image", "url": photo}, "image", photo),
        ("v1 data url", {"type": "image", "url": png_url}, "image", png),
        ("openai dict", {"type": "image_url", "image_url": {"url": png_url}}, "image", png),
        ("openai string", {"type": "image_url", "image_url": png_url}, "image", png),
        ("openai audio", {"type": "input_audio", **openai_audio}, "audio", wav),
        ("v0 base64", {"type": "image", **png_v0}, "image", png),
        ("v0 url", {"type": "image", "source_type": "url", "url": photo}, "image", photo),
        ("v0 audio", {"type": "audio", **wav_v0}, "audio", wav),
        ("anthropic", {"type": "image", **anthropic}, "image", png),
        ("v1 audio", {"type": "audio", "base64": b64(wav), "mime_type": "audio/wav"}, "audio", wav),
        ("v1 video", {"type": "video", "url": clip}, "video", clip),
        ("file by mime", {"type": "file", **png_v1}, "image", png),
        ("file by signature", {"type": "file", "base64": b64(png)}, "image", png),
        ("file by suffix", {"type": "file", "url": clip}, "video", clip),
        (
            "depth path",
            dict(create_depth_block(root / "room.npy")),
            "depth",
            str(root / "room.npy"),
        ),
        ("depth bytes", dict(create_depth_block(depth)), "depth", depth),
        ("thermal bytes", dict(create_thermal_block(png)), "thermal", png),
        ("imu path", dict(create_imu_block(root / "walk.npy")), "imu", str(root / "walk.npy")),
        ("imu bytes", dict(create_imu_block(imu)), "imu", imu),
    ]


def test_every_input_form_maps_to_a_media_item(media_dir: Path) -> None:
    for name, block, modality, data in _input_forms(media_dir):
        item = only_media(HumanMessage([{"type": "text", "text": "What is this?"}, block]))
        assert (item.modality, item.data) == (modality, data), name
        assert item.name.startswith("message 0, content block 1 ("), name


def test_sensor_blocks_from_arrays_paths_and_bytes(media_dir: Path) -> None:
    depth = np.random.default_rng(0).uniform(0.5, 3.0, (20, 24)).astype(np.float32)
    block = create_depth_block(depth, units="m")
    assert block["type"] == "file" and block["mime_type"] == "application/x-npy"
    assert block["extras"] == {"modality": "depth", "units": "m"} and is_sensor_block(block)
    item = only_media(HumanMessage(content_blocks=[block]))
    assert np.array_equal(np.load(io.BytesIO(item.data)), depth)
    assert create_thermal_block(media_dir / "photo.png")["mime_type"] == "image/png"
    assert create_imu_block(media_dir / "walk.npy")["url"] == (media_dir / "walk.npy").as_uri()
    assert not is_sensor_block({"type": "image", "url": "x.png"})
    with pytest.raises(MediaError, match="file not found"):
        create_depth_block(media_dir / "missing.npy")
    with pytest.raises(TypeError, match="path, bytes or a numpy array"):
        create_imu_block([1.0, 2.0])  # type: ignore[arg-type]


PNG_BLOCK = {"type": "image", "base64": "AAAA", "mime_type": "image/png"}
NO_LOCAL_FILES = MediaPolicy(allow_local_files=False)
# How each media problem is worded is tested once, in test_media.py; these check that chat
# errors name the message and block, and the checks that only chat makes.
BAD_BLOCKS = [
    (
        HumanMessage([{"type": "text", "text": "x"}, {**PNG_BLOCK, "base64": "%%%"}]),
        None,
        r"^message 0, content block 1 \(image\): base64 data cannot be decoded",
    ),
    (
        HumanMessage([{"type": "reasoning", "reasoning": "x"}]),
        None,
        r"^message 0, content block 0 \(reasoning\): human messages cannot hold 'reasoning'",
    ),
    (HumanMessage([{"type": "thermal", "url": "x.png"}]), None, r"block 0 \(non_standard\)"),
    (
        HumanMessage([{"type": "file", "base64": "JVBERi0=", "mime_type": "application/pdf"}]),
        None,
        r"^message 0, content block 0 \(file\): unknown media type \(application/pdf\)",
    ),
    (
        HumanMessage([{"type": "image", "url": "file:///etc/hostname"}]),
        NO_LOCAL_FILES,
        r"^message 0, content block 0 \(image\): local files are disabled",
    ),
    (AIMessage([PNG_BLOCK]), None, r"\(image\): AI messages cannot carry media"),
    (SystemMessage([PNG_BLOCK]), None, r"\(image\): system messages cannot hold 'image'"),
]


@pytest.mark.parametrize(("message", "policy", "match"), BAD_BLOCKS)
def test_bad_blocks_raise_value_errors_naming_the_block(
    message: BaseMessage, policy: MediaPolicy | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        messages_to_conversation([message], policy)


def test_media_fields_are_the_media_policy(tiny_bundle: Path) -> None:
    llm = ChatPandaGPT(
        model=str(tiny_bundle),
        allow_local_files=False,
        allow_remote_media=True,
        remote_media_max_bytes=100,
        remote_media_timeout=2.5,
    )
    assert llm._media_policy == MediaPolicy(False, True, 100, 2.5)
    default = ChatPandaGPT(model=str(tiny_bundle))._media_policy
    assert default == MediaPolicy() and not default.allow_remote_media


# --------------------------------------------------------------------------------------------
# Generation on the tiny bundle
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm(tiny_bundle: Path) -> ChatPandaGPT:
    return ChatPandaGPT(model=str(tiny_bundle), device="cpu", max_tokens=MAX_TOKENS)


def test_instances_share_lazily_loaded_weights_and_engine(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")  # a key no other test loaded
    loads: list[Path] = []
    real_load = registry_module.load_pandagpt

    def counting_load(path: Any, **kwargs: Any) -> Any:
        loads.append(Path(path))
        return real_load(path, **kwargs)

    monkeypatch.setattr(registry_module, "load_pandagpt", counting_load)
    models = [ChatPandaGPT(model=str(bundle), device="cpu", max_tokens=4) for _ in range(20)]
    assert loads == []  # building instances loads nothing
    answers = [model.invoke("Hello").content for model in models[:3]]
    assert len(loads) == 1 and answers[0] == answers[1] == answers[2]
    assert models[0].engine is models[1].engine is models[19].engine
    assert ChatPandaGPT(model=str(bundle), device="cpu", temperature=0.7).engine is models[0].engine


def test_every_media_kind_reaches_the_model(llm: ChatPandaGPT, media_dir: Path) -> None:
    blocks = [block for _, block, _, _ in _input_forms(media_dir)]
    message = HumanMessage([*blocks, {"type": "text", "text": "Describe all of it."}])
    result = llm.invoke([message])
    assert isinstance(result, AIMessage) and result.usage_metadata is not None
    assert result.usage_metadata["input_tokens"] == llm.get_num_tokens_from_messages([message])
    sequence = llm.model_copy(update={"media_fusion": "sequence"})
    per_item = sequence.get_num_tokens_from_messages([message])
    assert per_item == result.usage_metadata["input_tokens"] + len(blocks) - 1


def test_undecodable_media_raises_naming_the_block(llm: ChatPandaGPT) -> None:
    message = HumanMessage(
        [
            {"type": "text", "text": "What is this?"},
            {"type": "image", "base64": b64(b"not a png at all"), "mime_type": "image/png"},
        ]
    )
    with pytest.raises(MediaError, match=r"^message 0, content block 1 \(image\): "):
        llm.invoke([message])


@pytest.mark.asyncio
async def test_async_paths_raise_the_same_errors(llm: ChatPandaGPT) -> None:
    message = HumanMessage([{"type": "image", "base64": b64(b"nope"), "mime_type": "image/png"}])
    with pytest.raises(MediaError, match=r"^message 0, content block 0 \(image\): "):
        async for _ in llm.astream([message]):
            pass
    with pytest.raises(MediaError, match=r"^message 0, content block 0 \(image\): "):
        await llm.ainvoke([message])


def test_stream_matches_invoke_with_usage_on_the_last_chunk_only(llm: ChatPandaGPT) -> None:
    expected = llm.invoke("Tell me about the picture.")
    chunks = list(llm.stream("Tell me about the picture."))
    assert "".join(str(chunk.content) for chunk in chunks) == expected.content
    assert len(chunks) > 3  # streamed token by token, not in one piece
    *body, last = chunks
    assert all(c.usage_metadata is None and not c.response_metadata for c in body)
    assert last.chunk_position == "last" and last.usage_metadata is not None
    assert last.usage_metadata["output_tokens"] == MAX_TOKENS
    assert last.response_metadata["model_name"] == llm.model
    assert last.response_metadata["finish_reason"] == expected.response_metadata["finish_reason"]


def test_stop_sequences_cut_the_answer(llm: ChatPandaGPT) -> None:
    text = str(llm.invoke("Hello").content)
    stop = text[4:7]
    cut = text[: text.index(stop)]
    assert llm.invoke("Hello", stop=[stop]).content == cut
    assert llm.model_copy(update={"stop": [stop]}).invoke("Hello").content == cut


def test_token_counting_uses_the_prompt_layout(llm: ChatPandaGPT) -> None:
    history: list[BaseMessage] = [
        SystemMessage("Be brief."),
        HumanMessage("Hi"),
        AIMessage("Hello"),
    ]
    question = [*history, HumanMessage("What do you see?")]
    usage = llm.invoke(question).usage_metadata
    assert usage is not None
    assert llm.get_num_tokens_from_messages(question) == usage["input_tokens"]
    assert llm.get_num_tokens_from_messages(history) < usage["input_tokens"]  # ends with AI
    assert llm.get_num_tokens_from_messages([]) == 1  # BOS
    tokenizer = llm.engine.model.tokenizer
    assert llm.get_num_tokens("hello world") == len(tokenizer.encode("hello world")) - 1

    @tool
    def get_weather(location: str) -> str:
        """Get the weather."""
        return "sunny"

    with_tools = llm.get_num_tokens_from_messages(question, tools=[get_weather])
    usage = llm.bind_tools([get_weather]).invoke(question).usage_metadata
    assert usage is not None and with_tools == usage["input_tokens"]


@pytest.mark.asyncio
async def test_astream_does_not_block_the_event_loop(llm: ChatPandaGPT) -> None:
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    chunks = []
    long = llm.model_copy(update={"max_tokens": 64})
    started = time.perf_counter()
    async for chunk in long.astream("Describe the picture in detail."):
        chunks.append(chunk)
    finished = time.perf_counter()
    task.cancel()
    during = [tick for tick in ticks if started <= tick <= finished]
    assert len(chunks) > 10 and chunks[-1].chunk_position == "last"
    assert len(during) >= 10, "the event loop hardly ran while the model was generating"
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert max(gaps) < (finished - started) / 2


def _conversations() -> list[list[BaseMessage]]:
    prompts = ["Hello", "What is in the image?", "Write a poem.", "Tell me more.", "Yes or no?"]
    return [
        [HumanMessage(prompts[i % 5] + " " * (i // 5)), AIMessage("Sure."), HumanMessage(f"#{i}")]
        for i in range(8)
    ]


def _count_batches(monkeypatch: pytest.MonkeyPatch, model: ChatPandaGPT) -> list[int]:
    engine = model.engine
    sizes: list[int] = []
    real = engine.generate_batch

    def counting(conversations: Any, *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(conversations))
        return real(conversations, *args, **kwargs)

    monkeypatch.setattr(engine, "generate_batch", counting)
    return sizes


@pytest.mark.asyncio
async def test_abatch_is_one_engine_batch_with_sequential_results(
    llm: ChatPandaGPT, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversations = _conversations()
    sequential = [llm.invoke(conversation).content for conversation in conversations]
    sizes = _count_batches(monkeypatch, llm)
    batched = await llm.abatch(conversations)  # type: ignore[arg-type]
    assert sizes == [8]
    assert [message.content for message in batched] == sequential
    assert all(m.usage_metadata and m.usage_metadata["output_tokens"] for m in batched)


def test_batch_is_one_engine_batch_with_sequential_results(
    llm: ChatPandaGPT, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversations = _conversations()[:4]
    schema = {"title": "T", "type": "object", "properties": {"a": {"type": "integer"}}}
    structured = llm.with_structured_output({**schema, "required": ["a"]})
    sequential = [structured.invoke(conversation) for conversation in conversations]
    sizes = _count_batches(monkeypatch, llm)
    assert structured.batch(conversations) == sequential  # type: ignore[arg-type]
    assert sizes == [4]


# --------------------------------------------------------------------------------------------
# Structured output and tool calls: grammar-constrained, so always valid
# --------------------------------------------------------------------------------------------

WORDS = ("cat", "dog", "red", "blue", "sofa", "beach", "music", "rain", "warm", "street")


def random_spec(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    """A random JSON schema node: strings, integers, numbers, booleans, enums, arrays, objects."""
    kinds = ["string", "integer", "number", "boolean", "enum", "array", "object"]
    kind = rng.choice(kinds if depth < 2 else kinds[:-1])
    if kind == "string":
        spec: dict[str, Any] = {"type": "string"}
        if rng.random() < 0.4:
            spec["maxLength"] = rng.randint(1, 12)
            spec["minLength"] = rng.randint(0, spec["maxLength"])
        return spec
    if kind in ("integer", "number"):
        spec = {"type": kind}
        if rng.random() < 0.5:
            low = rng.randint(-50, 50)
            spec["exclusiveMinimum" if rng.random() < 0.3 else "minimum"] = low
            spec["maximum"] = low + rng.randint(2, 500)
        return spec
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "enum":
        return {"enum": rng.sample(WORDS, rng.randint(1, 4))}
    if kind == "array":
        spec = {"type": "array", "items": random_spec(rng, depth + 1)}
        if rng.random() < 0.5:
            spec["minItems"] = rng.randint(0, 2)
            spec["maxItems"] = spec["minItems"] + rng.randint(0, 3)
        return spec
    return random_object(rng, depth + 1)


def random_object(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for index in range(rng.randint(1, 4)):
        name = f"{rng.choice(WORDS)}_{index}"
        spec = random_spec(rng, depth)
        if rng.random() < 0.3:
            spec = {"anyOf": [spec, {"type": "null"}]}  # optional field
        else:
            required.append(name)
        properties[name] = spec
    return {"type": "object", "properties": properties, "required": required}


def to_pydantic(spec: dict[str, Any], name: str) -> type[BaseModel]:
    """The pydantic model whose JSON schema is ``spec`` (an object from :func:`random_object`)."""
    fields: dict[str, Any] = {}
    for key, sub in spec["properties"].items():
        required = key in spec["required"]
        annotation = _annotation(sub, f"{name}_{key}")
        fields[key] = (annotation, ... if required else None)
    return create_model(name, **fields)


def _annotation(spec: dict[str, Any], name: str) -> Any:
    from typing import Annotated

    if "anyOf" in spec:
        return Optional[_annotation(spec["anyOf"][0], name)]  # noqa: UP045 (runtime construction)
    if "enum" in spec:
        return Literal[tuple(spec["enum"])]
    kind = spec["type"]
    limits = {
        "minLength": "min_length",
        "maxLength": "max_length",
        "minItems": "min_length",
        "maxItems": "max_length",
        "minimum": "ge",
        "exclusiveMinimum": "gt",
        "maximum": "le",
    }
    constraints = {limits[k]: v for k, v in spec.items() if k in limits}
    base: Any = {"string": str, "integer": int, "number": float, "boolean": bool}.get(kind)
    if kind == "array":
        base = list[_annotation(spec["items"], name)]  # type: ignore[misc]
    elif kind == "object":
        base = to_pydantic(spec, name)
    return Annotated[base, Field(**constraints)] if constraints else base


@pytest.mark.slow
def test_structured_output_always_validates_on_50_random_schemas(llm: ChatPandaGPT) -> None:
    model = llm.model_copy(update={"max_tokens": 40})
    valid = 0
    for seed in range(50):
        rng = random.Random(seed)
        spec = random_object(rng)
        prompt = " ".join(rng.choices(WORDS, k=rng.randint(2, 8)))
        if seed % 2:
            schema = to_pydantic(spec, f"Answer{seed}")
            result = model.with_structured_output(schema).invoke(prompt)
            valid += isinstance(result, schema)
        else:
            titled = {"title": f"answer_{seed}", **spec}
            result = model.with_structured_output(titled).invoke(prompt)
            jsonschema.validate(result, spec)
            valid += 1
    assert valid == 50


def test_random_logits_fill_100_random_schemas_within_budget(llm: ChatPandaGPT) -> None:
    """The grammar alone, with pure noise for logits and budgets from 1 to 48 tokens: every
    document is complete, valid and inside its (raised-if-needed) budget."""
    from langchain_pandagpt.structured import (
        JsonGrammar,
        JsonLogitsProcessor,
        TokenVocabulary,
    )

    tokenizer = llm.engine.model.tokenizer
    vocabulary = TokenVocabulary.for_tokenizer(tokenizer, llm.engine.model.vocab_size)
    generator = torch.Generator().manual_seed(0)
    for seed in range(100):
        rng = random.Random(1000 + seed)
        schema = random_object(rng) if seed % 4 else random_spec(rng)
        grammar = JsonGrammar(schema)
        end_ids = (tokenizer.eos_token_id,)
        budget = max(rng.randint(1, 48), JsonLogitsProcessor.required_tokens(grammar, end_ids))
        processor = JsonLogitsProcessor(grammar, vocabulary, budget, end_ids=end_ids)
        tokens: list[int] = []
        while not tokens or tokens[-1] != tokenizer.eos_token_id:
            assert len(tokens) < budget, schema
            logits = torch.randn(vocabulary.size, generator=generator) * 5
            tokens.append(int(processor(tokens, logits).argmax()))
        jsonschema.validate(json.loads(tokenizer.decode(tokens, skip_special_tokens=True)), schema)


class Joke(BaseModel):
    """A joke."""

    setup: str = Field(description="question to set up a joke")
    punchline: str = Field(description="answer to resolve the joke")
    rating: int = Field(ge=1, le=10)


class JokeDict(TypedDict):
    """A joke."""

    setup: str
    punchline: str
    rating: int


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
@pytest.mark.parametrize("schema", [Joke, JokeDict, Joke.model_json_schema()])
def test_structured_output_methods_and_schema_kinds(
    llm: ChatPandaGPT, method: Any, schema: Any
) -> None:
    result = llm.with_structured_output(schema, method=method).invoke("Tell me a joke.")
    if schema is Joke:
        assert isinstance(result, Joke)
    elif schema is JokeDict:
        assert set(result) == {"setup", "punchline", "rating"}
    else:
        jsonschema.validate(result, schema)
    raw = llm.with_structured_output(schema, method=method, include_raw=True)
    answer = raw.invoke("Tell me a joke.")
    assert isinstance(answer["raw"], AIMessage) and answer["parsing_error"] is None
    assert answer["parsed"] == result


def test_json_mode_without_schema_returns_an_object(llm: ChatPandaGPT) -> None:
    result = llm.with_structured_output(None, method="json_mode").invoke("Any JSON, please.")
    assert isinstance(result, dict)


def test_json_answers_get_the_tokens_they_need_and_ignore_stops(llm: ChatPandaGPT) -> None:
    tiny = llm.model_copy(update={"max_tokens": 1, "stop": ['"']})
    joke = tiny.with_structured_output(Joke).invoke("Tell me a joke.")
    assert isinstance(joke, Joke)


def test_structured_output_in_reference_fidelity(llm: ChatPandaGPT) -> None:
    reference = llm.model_copy(update={"fidelity": "reference", "max_tokens": 40})
    message = HumanMessage(
        [
            {"type": "image", "base64": b64(png_bytes()), "mime_type": "image/png"},
            {"type": "text", "text": "Tell me a joke about this picture."},
        ]
    )
    bound = reference.bind(**_joke_format())
    text = str(bound.invoke([message]).content)
    Joke.model_validate_json(text)  # complete: the engine hid the filler and EOS, not JSON
    assert "".join(str(chunk.content) for chunk in bound.stream([message])) == text


def _joke_format() -> dict[str, Any]:
    schema = Joke.model_json_schema()
    json_schema = {"name": "Joke", "schema": schema}
    return {"response_format": {"type": "json_schema", "json_schema": json_schema}}


@tool
def get_weather(location: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> str:
    """Get the current weather in a location."""
    return "sunny"


class Point(BaseModel):
    x: float = Field(ge=-1, le=1)
    y: float = Field(ge=-1, le=1)


class DrawPolygon(BaseModel):
    """Draw a polygon through points."""

    points: list[Point] = Field(min_length=3, max_length=5)
    closed: bool
    label: str | None = None


@pytest.mark.parametrize(
    ("tool_choice", "names"),
    [
        ("any", {"get_weather", "DrawPolygon"}),
        ("required", {"get_weather", "DrawPolygon"}),
        (True, {"get_weather", "DrawPolygon"}),
        ("DrawPolygon", {"DrawPolygon"}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"get_weather"}),
    ],
)
def test_forced_tool_calls_are_well_formed_and_valid(
    llm: ChatPandaGPT, tool_choice: Any, names: set[str]
) -> None:
    bound = llm.bind_tools([get_weather, DrawPolygon], tool_choice=tool_choice)
    result = bound.invoke("Draw a triangle, then tell me the weather in Paris.")
    (call,) = result.tool_calls
    assert call["name"] in names and call["id"] and call["type"] == "tool_call"
    assert result.content == "" and not result.invalid_tool_calls
    if call["name"] == "DrawPolygon":
        DrawPolygon.model_validate(call["args"])
    else:
        jsonschema.validate(
            call["args"], convert_to_openai_tool(get_weather)["function"]["parameters"]
        )


def test_tool_choice_none_answers_in_text_and_bad_choices_fail_early(llm: ChatPandaGPT) -> None:
    result = llm.bind_tools([get_weather], tool_choice="none").invoke("Weather in Paris?")
    assert result.tool_calls == [] and result.content
    with pytest.raises(ValueError, match="tool_choice 'magic' is not"):
        llm.bind_tools([get_weather], tool_choice="magic")


def test_streamed_tool_calls_arrive_as_tool_call_chunks(llm: ChatPandaGPT) -> None:
    bound = llm.bind_tools([DrawPolygon], tool_choice="any")
    expected = bound.invoke("Draw a square.").tool_calls[0]["args"]
    chunks = [cast(AIMessageChunk, chunk) for chunk in bound.stream("Draw a square.")]
    with_calls = [chunk for chunk in chunks if chunk.tool_call_chunks]
    assert len(with_calls) > 3  # the arguments stream in pieces
    first = with_calls[0].tool_call_chunks[0]
    assert first["name"] == "DrawPolygon" and first["id"] and first["index"] == 0
    assert all(c.tool_call_chunks[0]["name"] is None for c in with_calls[1:])
    full = sum(chunks[1:], chunks[0])
    assert full.content == ""
    (call,) = full.tool_calls
    assert call["args"] == expected and call["id"] == first["id"]
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata


def _biased_first_token(monkeypatch: pytest.MonkeyPatch, model: ChatPandaGPT, text: bytes) -> None:
    """Make the model start its JSON-or-text answers with ``text`` (the tiny model has no
    preference between a tool call and prose)."""
    from langchain_pandagpt.structured import JsonLogitsProcessor, TokenVocabulary

    engine_model = model.engine.model
    vocabulary = TokenVocabulary.for_tokenizer(engine_model.tokenizer, engine_model.vocab_size)
    favourite = vocabulary.token_bytes.index(text)
    real_call = JsonLogitsProcessor.__call__

    def biased(self: JsonLogitsProcessor, generated: list[int], logits: Any) -> Any:
        if not generated:
            logits = logits.clone()
            logits[favourite] += 1e4
        return real_call(self, generated, logits)

    monkeypatch.setattr(JsonLogitsProcessor, "__call__", biased)


@pytest.mark.parametrize(("first", "is_call"), [(b"{", True), (b"A", False)])
def test_auto_tool_choice_lets_the_first_character_decide(
    llm: ChatPandaGPT, monkeypatch: pytest.MonkeyPatch, first: bytes, is_call: bool
) -> None:
    _biased_first_token(monkeypatch, llm, first)
    bound = llm.bind_tools([get_weather, DrawPolygon])
    result = bound.invoke("What is the weather in Paris?")
    streamed = [cast(AIMessageChunk, c) for c in bound.stream("What is the weather in Paris?")]
    full = sum(streamed[1:], streamed[0])
    if is_call:
        (call,) = result.tool_calls
        assert call["name"] in {"get_weather", "DrawPolygon"} and result.content == ""
        assert [c["args"] for c in full.tool_calls] == [call["args"]]
    else:
        assert result.tool_calls == [] and str(result.content).startswith("A")
        assert full.tool_calls == [] and full.content == result.content


PLOT = {
    "type": "function",
    "function": {
        "name": "plot",
        "description": "Plot points.",
        "parameters": {
            "type": "object",
            "$defs": {"P": {"type": "object", "properties": {"x": {"type": "integer"}}}},
            "properties": {"points": {"type": "array", "items": {"$ref": "#/$defs/P"}}},
            "required": ["points"],
        },
    },
}


class Scene(BaseModel):
    """A scene with a labelled point (nested model: its schema uses $defs)."""

    point: Point
    label: str


@pytest.mark.parametrize("tool_choice", ["plot", "any"])
def test_schema_refs_survive_being_combined(llm: ChatPandaGPT, tool_choice: str) -> None:
    result = llm.bind_tools([PLOT, get_weather], tool_choice=tool_choice).invoke("Plot 3 points.")
    (call,) = result.tool_calls
    if call["name"] == "plot":
        jsonschema.validate(call["args"], PLOT["function"]["parameters"])  # type: ignore[index]
    scene = Scene.model_json_schema()
    format_ = {"type": "json_schema", "json_schema": {"name": "Scene", "schema": scene}}
    answer = llm.bind_tools([PLOT], response_format=format_).invoke("Describe the scene.")
    assert answer.tool_calls or Scene.model_validate_json(str(answer.content))


def test_tools_with_a_response_format_answer_with_a_call_or_the_schema(
    llm: ChatPandaGPT,
) -> None:
    bound = llm.bind_tools([get_weather], **_joke_format())
    result = bound.invoke("Tell me a joke, or look up the weather.")
    if result.tool_calls:
        assert result.tool_calls[0]["name"] == "get_weather"
    else:
        Joke.model_validate_json(str(result.content))
