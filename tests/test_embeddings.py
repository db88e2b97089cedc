"""ImageBindEmbeddings: standard LangChain suites, every input form, caching, async, errors."""

from __future__ import annotations

import asyncio
import base64
import http.server
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests
from media_files import (
    loopback_server,
    make_tiny_checkpoint,
    write_depth,
    write_image,
    write_imu,
    write_mp4,
    write_wav,
)

from langchain_pandagpt.conversation import MediaItem
from langchain_pandagpt.embeddings import ImageBindEmbeddings, MediaInput
from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.generation import registry
from langchain_pandagpt.imagebind.checkpoint import load_imagebind
from langchain_pandagpt.imagebind.model import ImageBindModel
from langchain_pandagpt.media.policy import MediaPolicy
from langchain_pandagpt.model import embedder as embedder_module

# Async standard tests need an event loop: mark the suites (the sync tests' warning is moot).
ASYNC_SUITE = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:The test <Function:pytest.PytestWarning"),
]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("imagebind") / "tiny.safetensors")


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file per modality (plus a second image), named by the detection conventions."""
    folder = tmp_path_factory.mktemp("media")
    return {
        "image": write_image(folder / "cat.png"),
        "image2": write_image(folder / "dog.png", seed=1),
        "audio": write_wav(folder / "bark.wav"),
        "video": write_mp4(folder / "walk.mp4"),
        "thermal": write_image(folder / "night.thermal.png", seed=2),
        "depth": write_depth(folder / "room.npy"),
        "imu": write_imu(folder / "steps.npy"),
    }


@pytest.fixture
def embeddings(tiny_checkpoint: Path) -> ImageBindEmbeddings:
    return ImageBindEmbeddings(checkpoint=tiny_checkpoint, device="cpu")


@pytest.fixture
def encoder_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Records (tower, batch size) of every ImageBind forward pass."""
    calls: list[tuple[str, int]] = []
    original = ImageBindModel.encode

    def counting(self: ImageBindModel, modality: str, value: torch.Tensor, **kw: Any) -> Any:
        calls.append((modality, value.shape[0]))
        return original(self, modality, value, **kw)

    monkeypatch.setattr(ImageBindModel, "encode", counting)
    return calls


# --------------------------------------------------------------------------------------------
# LangChain standard suites
# --------------------------------------------------------------------------------------------


class _TinyCheckpointParams:
    checkpoint: Path

    @pytest.fixture(autouse=True)
    def _checkpoint(self, request: pytest.FixtureRequest, tiny_checkpoint: Path) -> None:
        request.cls.checkpoint = tiny_checkpoint

    @property
    def embeddings_class(self) -> type[ImageBindEmbeddings]:
        return ImageBindEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "device": "cpu"}


class TestImageBindEmbeddingsUnit(_TinyCheckpointParams, EmbeddingsUnitTests):
    pass


class TestImageBindEmbeddingsIntegration(_TinyCheckpointParams, EmbeddingsIntegrationTests):
    pytestmark = ASYNC_SUITE


# --------------------------------------------------------------------------------------------
# Construction and loading
# --------------------------------------------------------------------------------------------


def test_construction_checks_settings_and_loads_nothing(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pydantic reports them as ValidationError, a ValueError, with our message.
    with pytest.raises(ValueError, match=r"missing\.safetensors: ImageBind checkpoint not found"):
        ImageBindEmbeddings(checkpoint=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="device 'tpu' is not supported"):
        ImageBindEmbeddings(checkpoint=tiny_checkpoint, device="tpu")
    with pytest.raises(ValueError, match="bundle manifest not found"):
        ImageBindEmbeddings(bundle=tmp_path / "no-bundle")
    monkeypatch.setattr(embedder_module, "load_imagebind", _fail_if_called)
    ImageBindEmbeddings(checkpoint=tiny_checkpoint)


def _fail_if_called(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("construction must not load weights")


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValueError, match="batchsize"):
        ImageBindEmbeddings(batchsize=4)  # type: ignore[call-arg]


def test_towers_load_once_per_process_and_only_when_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "fresh.safetensors")
    loads: list[list[str]] = []

    def counting_load(*args: Any, **kwargs: Any) -> ImageBindModel:
        loads.append(list(kwargs["modalities"]))
        return load_imagebind(*args, **kwargs)

    monkeypatch.setattr(embedder_module, "load_imagebind", counting_load)

    def first_use(_: int) -> list[float]:  # a new instance per thread, as in a server
        return ImageBindEmbeddings(checkpoint=checkpoint, device="cpu").embed_query("a cat")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(first_use, range(8)))
    assert loads == [["text"]]
    assert all(result == results[0] for result in results)


# --------------------------------------------------------------------------------------------
# Input forms and detection
# --------------------------------------------------------------------------------------------


def test_every_input_form_gives_the_same_vector(
    embeddings: ImageBindEmbeddings, media: dict[str, Path]
) -> None:
    image = media["image"]
    data = image.read_bytes()
    b64 = base64.b64encode(data).decode()
    forms: list[MediaInput] = [
        str(image),
        image,
        image.as_uri(),
        f"data:image/png;base64,{b64}",
        (data, "image"),
        (str(image), "image"),
        MediaItem("image", str(image)),
        MediaItem("image", data),
        {"type": "image", "base64": b64, "mime_type": "image/png"},
        {"type": "image", "url": image.as_uri()},
        {"type": "image", "source_type": "base64", "data": b64, "mime_type": "image/png"},
    ]
    vectors = np.array(embeddings.embed_media(forms))
    np.testing.assert_allclose(vectors, np.repeat(vectors[:1], len(forms), axis=0), atol=1e-6)
    np.testing.assert_allclose(vectors[0], embeddings.embed_image([image])[0], atol=1e-6)


def test_arrays_and_files_agree(embeddings: ImageBindEmbeddings, media: dict[str, Path]) -> None:
    imu = np.load(media["imu"])
    depth = np.load(media["depth"])
    vectors = np.array(
        embeddings.embed_media(
            [
                media["imu"],
                (imu, "imu"),
                (torch.from_numpy(imu), "imu"),
                MediaItem("imu", imu),
                media["depth"],
                (depth, "depth"),
                {
                    "type": "file",
                    "base64": base64.b64encode(media["depth"].read_bytes()).decode(),
                    "mime_type": "application/x-npy",
                    "extras": {"modality": "depth"},
                },
            ]
        )
    )
    np.testing.assert_allclose(vectors[1:4], np.repeat(vectors[:1], 3, axis=0), atol=1e-6)
    np.testing.assert_allclose(vectors[5:], np.repeat(vectors[4:5], 2, axis=0), atol=1e-6)


def test_text_as_a_pair_matches_embed_query(embeddings: ImageBindEmbeddings) -> None:
    np.testing.assert_allclose(
        embeddings.embed_media([("a cat", "text")])[0], embeddings.embed_query("a cat"), atol=1e-6
    )


def test_mixed_batches_keep_input_order(
    tiny_checkpoint: Path, media: dict[str, Path], encoder_calls: list[tuple[str, int]]
) -> None:
    embeddings = ImageBindEmbeddings(checkpoint=tiny_checkpoint, device="cpu", batch_size=2)
    order = ["image", "imu", "image2", "audio", "depth", "video", "thermal"]
    together = embeddings.embed_media([media[name] for name in order])
    one_by_one = [embeddings.embed_media([media[name]])[0] for name in order]
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    # First call: two images in one batch, every other modality alone.
    assert sorted(encoder_calls[:6]) == sorted(
        [("vision", 2), ("imu", 1), ("audio", 1), ("depth", 1), ("vision", 1), ("thermal", 1)]
    )


def test_all_modalities_are_unit_vectors_and_raw_keeps_logit_scales(
    tiny_checkpoint: Path, media: dict[str, Path]
) -> None:
    items: list[Any] = [media[m] for m in ("image", "audio", "video", "thermal", "depth", "imu")]
    items.append(("a cat", "text"))
    normalized = ImageBindEmbeddings(checkpoint=tiny_checkpoint, device="cpu")
    norms = np.linalg.norm(np.array(normalized.embed_media(items)), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    raw = ImageBindEmbeddings(checkpoint=tiny_checkpoint, device="cpu", normalize=False)
    raw_norms = np.linalg.norm(np.array(raw.embed_media(items)), axis=1)
    assert raw_norms[0] == pytest.approx(1.0, abs=1e-5)  # vision has no logit scale
    assert raw_norms[-1] == pytest.approx(1 / 0.07, rel=1e-4)  # text: the initial CLIP scale
    assert raw_norms[3] == pytest.approx(10.0, rel=1e-4)  # thermal
    assert raw_norms[4] == pytest.approx(5.0, rel=1e-4)  # depth
    assert raw_norms[1] <= 20.0 + 1e-4  # audio: mean of 3 clips scaled by 20


# --------------------------------------------------------------------------------------------
# On-disk cache
# --------------------------------------------------------------------------------------------


def test_disk_cache_skips_the_encoder(
    tiny_checkpoint: Path,
    media: dict[str, Path],
    tmp_path: Path,
    encoder_calls: list[tuple[str, int]],
) -> None:
    items: list[Any] = [media["image"], media["audio"], media["imu"], ("a cat", "text")]
    first = ImageBindEmbeddings(checkpoint=tiny_checkpoint, device="cpu", cache_dir=tmp_path)
    cold = first.embed_media(items)
    assert len(encoder_calls) == 4
    second = ImageBindEmbeddings(checkpoint=tiny_checkpoint, device="cpu", cache_dir=tmp_path)
    warm = second.embed_media(items)
    assert len(encoder_calls) == 4  # all four came from disk
    np.testing.assert_allclose(warm, cold, atol=1e-6)
    assert not list(tmp_path.rglob("*.tmp"))
    assert len(list(tmp_path.rglob("*.npy"))) == 4
    # Raw vectors are stored, so a normalize=False reader shares the cache.
    raw = ImageBindEmbeddings(
        checkpoint=tiny_checkpoint, device="cpu", cache_dir=tmp_path, normalize=False
    )
    raw.embed_media(items)
    assert len(encoder_calls) == 4


def test_disk_cache_never_serves_another_checkpoint(
    tiny_checkpoint: Path, media: dict[str, Path], tmp_path: Path
) -> None:
    other = make_tiny_checkpoint(tmp_path / "other.safetensors", seed=1)
    first = ImageBindEmbeddings(checkpoint=tiny_checkpoint, cache_dir=tmp_path / "cache")
    second = ImageBindEmbeddings(checkpoint=other, cache_dir=tmp_path / "cache")
    assert first.model_fingerprint() != second.model_fingerprint()
    a = first.embed_image([media["image"]])
    b = second.embed_image([media["image"]])
    assert not np.allclose(a, b)


def test_corrupt_cache_entry_is_a_miss(
    tiny_checkpoint: Path, media: dict[str, Path], tmp_path: Path
) -> None:
    embeddings = ImageBindEmbeddings(checkpoint=tiny_checkpoint, cache_dir=tmp_path)
    expected = embeddings.embed_image([media["image"]])
    (entry,) = tmp_path.rglob("*.npy")
    entry.write_bytes(b"garbage")
    np.testing.assert_allclose(embeddings.embed_image([media["image"]]), expected, atol=1e-6)
    assert np.load(entry).shape == (32,)


# --------------------------------------------------------------------------------------------
# Async
# --------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_variants_match_sync(
    embeddings: ImageBindEmbeddings, media: dict[str, Path]
) -> None:
    assert await embeddings.aembed_query("a cat") == embeddings.embed_query("a cat")
    assert await embeddings.aembed_documents(["x", "y"]) == embeddings.embed_documents(["x", "y"])
    assert await embeddings.aembed_image([media["image"]]) == embeddings.embed_image(
        [media["image"]]
    )
    assert await embeddings.aembed_audio([media["audio"]]) == embeddings.embed_audio(
        [media["audio"]]
    )
    assert await embeddings.aembed_video([media["video"]]) == embeddings.embed_video(
        [media["video"]]
    )
    assert await embeddings.aembed_media([media["imu"]]) == embeddings.embed_media([media["imu"]])


@pytest.mark.asyncio
async def test_async_embedding_does_not_block_the_loop(
    embeddings: ImageBindEmbeddings, media: dict[str, Path]
) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    await embeddings.aembed_media([media["video"], media["audio"], media["image2"]])
    task.cancel()
    assert ticks > 3


# --------------------------------------------------------------------------------------------
# Errors and access control
# --------------------------------------------------------------------------------------------


# How each media problem is worded is tested once, in test_media.py; these are the checks
# that only the embeddings make, and that every input form reaches the media layer.
@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("/nowhere/cat.png", "/nowhere/cat.png: file not found"),
        ("http://example.com/cat.png", "remote media are disabled"),
        ({"type": "image", "file_id": "f1"}, "items[0] (image block): file_id references"),
        ((np.zeros(16000), "audio"), "audio arrays are not accepted"),
        (MediaItem("image", np.zeros(32), is_embedding=True), "already an embedding"),
        (3.5, "unsupported input type"),
    ],
)
def test_unusable_items_raise_media_error(
    embeddings: ImageBindEmbeddings, item: Any, message: str
) -> None:
    with pytest.raises(MediaError, match=re.escape(message)):
        embeddings.embed_media([item])


def test_bad_media_content_names_the_file(embeddings: ImageBindEmbeddings, tmp_path: Path) -> None:
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"not an image at all")
    with pytest.raises(MediaError, match=r"fake\.png"):
        embeddings.embed_image([fake])


def test_wrong_call_shapes(embeddings: ImageBindEmbeddings, media: dict[str, Path]) -> None:
    with pytest.raises(TypeError, match="list of items"):
        embeddings.embed_media(str(media["image"]))
    with pytest.raises(ValueError, match="unknown modality 'smell'"):
        embeddings.embed_media([(media["image"], "smell")])
    assert embeddings.embed_media([]) == []
    assert embeddings.embed_documents([]) == []


def test_media_fields_are_the_media_policy(tiny_checkpoint: Path, media: dict[str, Path]) -> None:
    sandboxed = ImageBindEmbeddings(
        checkpoint=tiny_checkpoint,
        allow_local_files=False,
        allow_remote_media=True,
        max_remote_bytes=100,
        remote_timeout=2.5,
    )
    assert sandboxed._media_policy() == MediaPolicy(False, True, 100, 2.5)
    assert ImageBindEmbeddings()._media_policy() == MediaPolicy()
    with pytest.raises(MediaError, match="local files are disabled"):
        sandboxed.embed_media([media["image"]])
    b64 = base64.b64encode(media["image"].read_bytes()).decode()
    assert len(sandboxed.embed_image([f"data:image/png;base64,{b64}"])) == 1


@pytest.fixture
def http_server(media: dict[str, Path]) -> Iterator[str]:
    """Serves the media folder on localhost (no external network involved)."""
    folder = media["image"].parent

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with loopback_server(Handler) as base:
        yield base


def test_remote_media_when_allowed(
    tiny_checkpoint: Path, media: dict[str, Path], http_server: str
) -> None:
    remote = ImageBindEmbeddings(
        checkpoint=tiny_checkpoint, allow_remote_media=True, remote_allow_hosts=["127.0.0.1"]
    )
    fetched = remote.embed_media([f"{http_server}/cat.png", f"{http_server}/steps.npy"])
    local = remote.embed_media([media["image"], media["imu"]])
    np.testing.assert_allclose(fetched, local, atol=1e-6)
    capped = ImageBindEmbeddings(
        checkpoint=tiny_checkpoint,
        allow_remote_media=True,
        max_remote_bytes=100,
        remote_allow_hosts=["127.0.0.1"],
    )
    with pytest.raises(MediaError, match="over the max_remote_bytes limit of 100 bytes"):
        capped.embed_image([f"{http_server}/cat.png"])


# --------------------------------------------------------------------------------------------
# The framework-free embedder behind ImageBindEmbeddings (and the server)
# --------------------------------------------------------------------------------------------


class _RecordingEncoder:
    """A :class:`MediaEncoder` of its own: the real encoder, another fingerprint, a call log."""

    def __init__(self, inner: embedder_module.CheckpointEncoder) -> None:
        self.inner = inner
        self.calls: list[tuple[str, int]] = []

    @property
    def fingerprint(self) -> str:
        return "recording-encoder"

    def encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        self.calls.append((modality, batch.shape[0]))
        return self.inner.encode(modality, batch)

    def preprocess_kwargs(self, modality: str) -> dict[str, Any]:
        return self.inner.preprocess_kwargs(modality)


def test_embedder_takes_an_injected_encoder(
    embeddings: ImageBindEmbeddings, tiny_checkpoint: Path, media: dict[str, Path], tmp_path: Path
) -> None:
    inner = embeddings._encoder()
    cpu = torch.device("cpu")
    assert inner is registry.shared_encoder(tiny_checkpoint, cpu, torch.float32)
    encoder = _RecordingEncoder(inner)
    embedder = embedder_module.MediaEmbedder(encoder, batch_size=2, cache_dir=tmp_path)
    image = MediaItem("image", str(media["image"]))
    inputs: list[embedder_module.EmbedderInput] = ["a cat", image, "a dog", "a bird"]
    vectors = embedder.embed(inputs)
    assert vectors.shape == (4, 32) and vectors.dtype == torch.float32
    expected = embeddings.embed_media([("a cat", "text"), media["image"]])
    np.testing.assert_allclose(vectors[:2].numpy(), expected, atol=1e-6)
    assert sorted(encoder.calls) == [("image", 1), ("text", 1), ("text", 2)]
    assert embedder.embed(inputs[:2]).shape == (2, 32) and len(encoder.calls) == 3  # cached
    assert (tmp_path / "recording-encoder").is_dir()  # the cache is keyed by the fingerprint
    assert embedder.embed([]).shape == (0, 0)


def test_embedder_refuses_unresolved_inputs(embeddings: ImageBindEmbeddings) -> None:
    embedder = embedder_module.MediaEmbedder(embeddings._encoder())
    with pytest.raises(MediaError, match="already an embedding"):
        embedder.embed([MediaItem("image", np.zeros(32), is_embedding=True)])
    with pytest.raises(TypeError, match="resolve paths, URLs and blocks"):
        embedder.embed([{"type": "image", "url": "x.png"}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        embedder_module.MediaEmbedder(embeddings._encoder(), batch_size=0)
