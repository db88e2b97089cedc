"""ImageBind as LangChain ``Embeddings``: text, images, audio, video, depth, thermal and IMU.

Every modality lands in ImageBind's one joint space, so a text query retrieves images, sounds
or clips, and any medium can query any other. Besides the standard ``embed_documents`` /
``embed_query`` (text), :class:`ImageBindEmbeddings` offers the informal multimodal convention
that Chroma and LanceDB look for (``embed_image(uris)``) plus ``embed_audio``, ``embed_video``
and a generic ``embed_media`` for every modality.

Example:
    .. code-block:: python

        from langchain_pandagpt.embeddings import ImageBindEmbeddings

        embeddings = ImageBindEmbeddings(checkpoint="imagebind_huge.safetensors", cache_dir=".emb")
        query = embeddings.embed_query("a dog barking")
        media = embeddings.embed_media(["dog.jpg", "bark.wav", "walk.imu.npy"])
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib
import io
import mimetypes
import os
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F
from langchain_core.embeddings import Embeddings
from langchain_core.runnables.config import run_in_executor
from pydantic import BaseModel, ConfigDict, Field

from langchain_pandagpt.content_blocks import fetch_remote_media, parse_data_url
from langchain_pandagpt.conversation import IMAGEBIND_TOWER, MEDIA_MODALITIES, MediaItem
from langchain_pandagpt.downloads import sha256_of
from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.imagebind.checkpoint import load_imagebind, resolve_imagebind_checkpoint
from langchain_pandagpt.imagebind.model import ImageBindModel

#: Everything :meth:`ImageBindEmbeddings.embed_media` can embed: text plus the media kinds.
EMBEDDING_MODALITIES: Final[tuple[str, ...]] = ("text", *MEDIA_MODALITIES)
#: MIME type used for NumPy ``.npy`` files (IMU windows, depth maps).
NPY_MIME_TYPE: Final = "application/x-npy"
#: Bump when preprocessing changes so that old on-disk vectors are never reused.
_CACHE_FORMAT: Final = "imagebind-embeddings-v1"

#: Extensions whose MIME type must not depend on the host's ``mime.types`` files.
_EXTENSION_MIME: Final[dict[str, str]] = {
    ".npy": NPY_MIME_TYPE,
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".mp3": "audio/mpeg",
    ".m4a": "audio/mp4",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
    ".webp": "image/webp",
    ".mkv": "video/x-matroska",
    ".webm": "video/webm",
}
#: Name hints for modalities that share file formats with others: ``room.depth.png``,
#: ``cam.thermal.jpg``, ``walk.imu.npy``.
_NAME_HINTS: Final[dict[str, str]] = {".depth": "depth", ".thermal": "thermal", ".imu": "imu"}
#: Loader (in ``langchain_pandagpt.imagebind.data``) for each modality.
_LOADERS: Final[dict[str, str]] = {
    "text": "load_and_transform_text",
    "image": "load_and_transform_vision_data",
    "video": "load_and_transform_video_data",
    "audio": "load_and_transform_audio_data",
    "thermal": "load_and_transform_thermal_data",
    "depth": "load_and_transform_depth_data",
    "imu": "load_and_transform_imu_data",
}
_TOWERS: Final[dict[str, str]] = {"text": "text", **IMAGEBIND_TOWER}
_DTYPES: Final[dict[str, torch.dtype]] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_NPY_HEADER_BYTES: Final = 4096

MediaData: TypeAlias = str | os.PathLike[str] | bytes | np.ndarray | torch.Tensor
#: One input of :meth:`ImageBindEmbeddings.embed_media`: a path or URI, a ``MediaItem``, a
#: ``(data, modality)`` pair, or a LangChain data content block (``{"type": "image", ...}``).
MediaInput: TypeAlias = (
    str | os.PathLike[str] | MediaItem | tuple[MediaData, str] | Mapping[str, Any]
)


# --------------------------------------------------------------------------------------------
# Media type detection
# --------------------------------------------------------------------------------------------


def guess_mime_type(name: str) -> str | None:
    """MIME type of a file name or URL path, from its extension (``None`` when unknown)."""
    suffix = Path(name).suffix.lower()
    return _EXTENSION_MIME.get(suffix) or mimetypes.guess_type(name, strict=False)[0]


def _npy_shape(header: bytes) -> tuple[int, ...] | None:
    """The array shape stored in the first bytes of a ``.npy`` file, or ``None``."""
    stream = io.BytesIO(header)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, _ = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, _, _ = np.lib.format.read_array_header_2_0(stream)
    except (ValueError, OSError, EOFError):
        return None
    return tuple(shape)


def guess_modality(
    name: str | None = None, *, mime_type: str | None = None, header: bytes | None = None
) -> str | None:
    """The media modality of a file from its name, MIME type and (for ``.npy``) header bytes.

    Rules, first match wins: a name hint before the extension (``x.depth.png``,
    ``x.thermal.jpg``, ``x.imu.npy``); ``image/*``, ``audio/*`` and ``video/*`` MIME types;
    a ``.npy`` array of shape (6, 2000) or (2000, 6) is IMU and any other 2-D array a depth
    map. Thermal images and 16-bit depth PNGs are ordinary images to a MIME sniffer, hence
    the name hints. Returns ``None`` when nothing matches.
    """
    if name:
        suffixes = [s.lower() for s in Path(name).suffixes]
        if len(suffixes) >= 2 and suffixes[-2] in _NAME_HINTS:
            return _NAME_HINTS[suffixes[-2]]
    mime = mime_type or (guess_mime_type(name) if name else None)
    if mime is None:
        return None
    kind = mime.split("/", 1)[0]
    if kind in ("image", "audio", "video"):
        return kind
    if mime == NPY_MIME_TYPE and header is not None:
        shape = _npy_shape(header)
        if shape in ((6, 2000), (2000, 6)):
            return "imu"
        if shape is not None and (len(shape) == 2 or (len(shape) == 3 and shape[2] == 1)):
            return "depth"
    return None


def guess_file_modality(path: str | os.PathLike[str]) -> str | None:
    """:func:`guess_modality` for a local file, reading the header of ``.npy`` files only."""
    file = Path(path)
    header = None
    if guess_mime_type(file.name) == NPY_MIME_TYPE:
        with file.open("rb") as handle:
            header = handle.read(_NPY_HEADER_BYTES)
    return guess_modality(file.name, header=header)


# --------------------------------------------------------------------------------------------
# Sources: every input form, resolved to one shape
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """One input to embed: a local file read lazily, or data already in memory.

    ``data`` is the text for ``text``, file bytes, or an array.
    """

    modality: str
    name: str
    path: Path | None = None
    data: bytes | np.ndarray | torch.Tensor | str | None = None

    def digest(self) -> str:
        """SHA-256 over the modality and the content (file bytes for local files)."""
        digest = hashlib.sha256(self.modality.encode() + b"\0")
        if self.path is not None:
            digest.update(bytes.fromhex(sha256_of(self.path)))
        elif isinstance(self.data, str):
            digest.update(self.data.encode("utf-8"))
        elif isinstance(self.data, bytes):
            digest.update(self.data)
        else:
            array = np.ascontiguousarray(_as_numpy(self.data))
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()

    def loader_input(self) -> object:
        """What the modality's loader takes: the path itself (so videos are never read whole),
        a named in-memory file, an array, or the text."""
        if self.path is not None:
            return os.fspath(self.path)
        if isinstance(self.data, bytes):
            stream = io.BytesIO(self.data)
            stream.name = self.name
            return stream
        if isinstance(self.data, torch.Tensor) and self.modality != "imu":
            return self.data.detach().cpu().numpy()
        return self.data


def _as_numpy(value: object) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


# --------------------------------------------------------------------------------------------
# Process-wide encoders and the on-disk vector cache
# --------------------------------------------------------------------------------------------


@dataclass
class _Encoder:
    """One ImageBind checkpoint on one device and dtype, with towers loaded on first use.

    Shared by every :class:`ImageBindEmbeddings` with the same settings. ``lock`` serialises
    loading and forward passes: decoding media runs in parallel, the encoder runs one batch at
    a time, which keeps memory bounded and avoids oversubscribing CPU threads.
    """

    path: Path
    device: torch.device
    dtype: torch.dtype
    lock: threading.Lock = field(default_factory=threading.Lock)
    towers: dict[str, ImageBindModel] = field(default_factory=dict)

    def _tower(self, tower: str) -> ImageBindModel:
        model = self.towers.get(tower)
        if model is None:
            model = load_imagebind(
                self.path, modalities=[tower], device=self.device, dtype=self.dtype
            )
            self.towers[tower] = model
        return model

    def encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        """Raw ImageBind embeddings (official logit scales included) as float32 on the CPU."""
        tower = _TOWERS[modality]
        with self.lock, torch.inference_mode():
            return self._tower(tower).encode(tower, batch).float().cpu()

    def preprocess_kwargs(self, modality: str) -> dict[str, Any]:
        """Loader options that depend on the checkpoint's config."""
        if modality != "audio":
            return {}
        with self.lock:
            config = self._tower("audio").config
        return {"num_mel_bins": config.audio_num_mel_bins, "target_length": config.audio_target_len}


_ENCODERS: dict[tuple[str, int, int, str, str], _Encoder] = {}
_ENCODERS_LOCK = threading.Lock()
_CHECKPOINT_DIGESTS: dict[tuple[str, int, int], str] = {}


def _encoder_for(path: Path, device: torch.device, dtype: torch.dtype) -> _Encoder:
    """The shared encoder for a checkpoint file (a replaced file gets a fresh one)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(device), str(dtype))
    with _ENCODERS_LOCK:
        encoder = _ENCODERS.get(key)
        if encoder is None:
            encoder = _ENCODERS[key] = _Encoder(path, device, dtype)
        return encoder


def _checkpoint_digest(path: Path) -> str:
    """SHA-256 of the checkpoint file, computed once per process and file version."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _ENCODERS_LOCK:
        cached = _CHECKPOINT_DIGESTS.get(key)
    if cached is None:
        cached = sha256_of(path)
        with _ENCODERS_LOCK:
            _CHECKPOINT_DIGESTS[key] = cached
    return cached


class _VectorCache:
    """Raw vectors as one small ``.npy`` per item in a sharded folder of one model.

    Writes go to a temporary file then ``os.replace``, so concurrent processes never see a
    partial vector; an unreadable entry is simply a miss and gets rewritten.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str) -> torch.Tensor | None:
        try:
            array = np.load(self._path(key), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        return torch.from_numpy(array) if array.ndim == 1 else None

    def put(self, key: str, vector: torch.Tensor) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                np.save(out, vector.numpy())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


# --------------------------------------------------------------------------------------------
# The LangChain embeddings
# --------------------------------------------------------------------------------------------


class ImageBindEmbeddings(BaseModel, Embeddings):
    """ImageBind embeddings for text and six media modalities, in one comparable space.

    Construction is free: the checkpoint is loaded on the first call, once per process for
    each (checkpoint, device, dtype), and only the towers actually used are built (a text and
    image workload never allocates the audio, depth, thermal or IMU towers).

    ``normalize=True`` (the default) L2-normalises every vector. ImageBind's raw outputs are
    unit vectors multiplied by a per-modality logit scale (text about 100 for a trained model,
    audio 20, thermal 10, depth and IMU 5, vision 1) and, for audio and video, averaged over
    clips. Those scales only sharpen the softmax used in training; left in, they make dot
    products and Euclidean distances depend on *which* modalities are compared rather than
    how similar the items are. Normalised vectors make cosine, dot product and L2 search
    agree across all modalities. ``normalize=False`` returns the official raw outputs.

    Inputs are accepted as local paths, ``file://`` and ``data:`` URIs and, only with
    ``allow_remote_media=True``, ``http(s)://`` URLs (fetched with ``urllib``, capped at
    ``max_remote_bytes``). ``allow_local_files=False`` refuses local paths, e.g. when URIs
    come from untrusted users.

    With ``cache_dir`` set, every vector is stored on disk under the SHA-256 of its content,
    modality and a fingerprint of the checkpoint file and dtype (not the device: CPU and GPU
    agree to float tolerance): a collection is never encoded twice, and changing checkpoints
    never returns stale vectors.

    Every ``aembed_*`` method (``aembed_documents`` and ``aembed_query`` come from
    ``Embeddings``) runs its sync twin in a worker thread, so the event loop never blocks.
    """

    model_config = ConfigDict(extra="forbid")

    checkpoint: Path | None = None
    """ImageBind checkpoint (``.safetensors`` or the official ``.pth``), a folder holding one,
    or ``None`` for the user cache (``$PANDAGPT_CACHE/imagebind``)."""
    device: str | None = None
    """Torch device; ``None`` picks CUDA when available, else the CPU."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Encoder precision. Prefer ``bfloat16`` over ``float16`` on CPUs."""
    allow_download: bool = False
    """Download ``imagebind_huge`` into the user cache when ``checkpoint`` is ``None`` and
    the file is missing."""
    batch_size: int = Field(default=16, gt=0)
    """Items per forward pass; inputs are grouped by modality first."""
    cache_dir: Path | None = None
    """Folder of the on-disk embedding cache; ``None`` disables it."""
    normalize: bool = True
    """L2-normalise every vector (see the class docstring for why)."""
    allow_local_files: bool = True
    """Accept local paths and ``file://`` URIs."""
    allow_remote_media: bool = False
    """Accept ``http(s)://`` URLs (off by default: fetching URLs is a server-side request)."""
    max_remote_bytes: int = Field(default=100 * 2**20, gt=0)
    """Largest remote file fetched, in bytes."""
    remote_timeout: float = Field(default=30.0, gt=0)
    """Timeout in seconds of each network operation when fetching remote media."""

    # -- text (the standard Embeddings interface) ----------------------------------------

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed texts with ImageBind's text tower (77 CLIP tokens, longer texts truncated)."""
        return self._embed([_Source("text", _short(text), data=text) for text in texts])

    def embed_query(self, text: str) -> list[float]:
        """Embed one query text; it is comparable with every media vector."""
        return self.embed_documents([text])[0]

    # -- media ---------------------------------------------------------------------------

    def embed_image(self, uris: Sequence[str | os.PathLike[str]]) -> list[list[float]]:
        """Embed images given as paths or URIs (the ``embed_image`` convention of Chroma and
        LanceDB ``add_images``)."""
        return self.embed_media([(uri, "image") for uri in uris])

    def embed_audio(self, uris: Sequence[str | os.PathLike[str]]) -> list[list[float]]:
        """Embed audio files given as paths or URIs (WAV, FLAC, MP3, M4A...)."""
        return self.embed_media([(uri, "audio") for uri in uris])

    def embed_video(self, uris: Sequence[str | os.PathLike[str]]) -> list[list[float]]:
        """Embed videos given as paths or URIs (15 views: 5 clips x 3 crops, averaged)."""
        return self.embed_media([(uri, "video") for uri in uris])

    def embed_media(self, items: Sequence[MediaInput]) -> list[list[float]]:
        """Embed any mix of modalities, one vector per item, in input order.

        An item is a path or URI (modality from :func:`guess_modality`), a
        :class:`~langchain_pandagpt.conversation.MediaItem`, a ``(data, modality)`` pair
        (``data``: path/URI, bytes, array or tensor; ``("a dog", "text")`` for text), or a
        LangChain data content block such as ``to_content_block`` produces. Items are
        batched per modality with ``batch_size``. Unusable items raise ``MediaError``
        naming them.
        """
        if isinstance(items, str | bytes | os.PathLike | Mapping):
            raise TypeError("embed_media takes a list of items; wrap a single item: [item]")
        return self._embed([self._resolve(item) for item in items])

    async def aembed_image(self, uris: Sequence[str | os.PathLike[str]]) -> list[list[float]]:
        """Async :meth:`embed_image`, run in a worker thread."""
        return await run_in_executor(None, self.embed_image, uris)

    async def aembed_audio(self, uris: Sequence[str | os.PathLike[str]]) -> list[list[float]]:
        """Async :meth:`embed_audio`, run in a worker thread."""
        return await run_in_executor(None, self.embed_audio, uris)

    async def aembed_video(self, uris: Sequence[str | os.PathLike[str]]) -> list[list[float]]:
        """Async :meth:`embed_video`, run in a worker thread."""
        return await run_in_executor(None, self.embed_video, uris)

    async def aembed_media(self, items: Sequence[MediaInput]) -> list[list[float]]:
        """Async :meth:`embed_media`, run in a worker thread."""
        return await run_in_executor(None, self.embed_media, items)

    def model_fingerprint(self) -> str:
        """Identifies the vectors this configuration produces: the checkpoint's SHA-256 (once
        per process), the dtype and the preprocessing version. Stores built with another
        fingerprint must be re-embedded."""
        digest = _checkpoint_digest(self._checkpoint_path())
        return hashlib.sha256(f"{_CACHE_FORMAT}|{digest}|{self.dtype}".encode()).hexdigest()

    # -- input resolution ----------------------------------------------------------------

    def _resolve(self, item: MediaInput) -> _Source:
        if isinstance(item, MediaItem):
            name = item.describe()
            if item.is_embedding:
                raise MediaError(name, "is already an embedding", "use its data directly")
            return self._resolve_data(item.data, item.modality, name)
        if isinstance(item, tuple):
            if len(item) != 2 or not isinstance(item[1], str):
                raise TypeError(f"expected a (data, modality) pair, got a {len(item)}-tuple")
            data, modality = item
            if modality not in EMBEDDING_MODALITIES:
                raise ValueError(
                    f"unknown modality {modality!r}; use one of {', '.join(EMBEDDING_MODALITIES)}"
                )
            if modality == "text":
                if not isinstance(data, str):
                    raise TypeError(f"text must be a str, got {type(data).__name__}")
                return _Source("text", _short(data), data=data)
            return self._resolve_data(data, modality, None)
        if isinstance(item, Mapping):
            return self._resolve_block(item)
        if isinstance(item, str | os.PathLike):
            return self._resolve_location(os.fspath(item), None)
        raise MediaError(
            f"<{type(item).__name__}>",
            "unsupported input type",
            "pass a path or URI, a MediaItem, a (data, modality) pair or a content block",
        )

    def _resolve_data(self, data: object, modality: str, name: str | None) -> _Source:
        if isinstance(data, str | os.PathLike):
            return self._resolve_location(os.fspath(data), modality)
        if isinstance(data, bytes | bytearray | memoryview):
            return _Source(modality, name or f"<{modality} bytes: {len(data)} B>", data=bytes(data))
        if isinstance(data, np.ndarray | torch.Tensor):
            if modality in ("audio", "video"):
                raise MediaError(
                    name or f"<{modality} array>",
                    f"{modality} arrays are not accepted",
                    "pass the encoded file as a path or bytes",
                )
            return _Source(modality, name or f"<{modality} array {tuple(data.shape)}>", data=data)
        raise MediaError(
            name or f"<{type(data).__name__}>",
            f"unsupported {modality} data type {type(data).__name__}",
            "pass a path or URI, bytes, a numpy array or a tensor",
        )

    def _resolve_block(self, block: Mapping[str, Any]) -> _Source:
        """A LangChain v1 (or v0 ``source_type``) image/audio/video/file content block."""
        kind = block.get("type")
        extras = block.get("extras") or {}
        mime = block.get("mime_type")
        modality = extras.get("modality") if isinstance(extras, Mapping) else None
        if modality is None and kind in ("image", "audio", "video"):
            modality = kind
        if block.get("base64") is not None or block.get("source_type") == "base64":
            encoded = block.get("base64") or block.get("data") or ""
            name = f"<{kind} block: base64>"
            try:
                data = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise MediaError(name, f"base64 payload is invalid ({exc})") from exc
            modality = modality or guess_modality(mime_type=mime, header=data[:_NPY_HEADER_BYTES])
            if modality is None:
                raise MediaError(name, f"unknown media type {mime!r}", _MODALITY_FIX)
            return self._resolve_data(data, _check_modality(modality, name), name)
        url = block.get("url")
        if isinstance(url, str):
            return self._resolve_location(url, modality)
        raise MediaError(
            f"<{kind} block>",
            "has neither base64 data nor a url",
            "file_id blocks cannot be embedded: pass base64 or a url",
        )

    def _resolve_location(self, location: str, modality: str | None) -> _Source:
        """Paths and URIs: local files stay on disk until their batch is encoded."""
        lowered = location[:8].lower()
        if lowered.startswith("data:"):
            data, mime = parse_data_url(location, _short(location))
            name = f"{location[:40]}..." if len(location) > 40 else location
            return self._in_memory(data, modality, name, mime=mime)
        if lowered.startswith(("http://", "https://")):
            if not self.allow_remote_media:
                raise MediaError(
                    location,
                    "remote media are disabled",
                    "pass allow_remote_media=True to fetch http(s) URLs",
                )
            data, mime = fetch_remote_media(
                location, self.max_remote_bytes, self.remote_timeout, limit_name="max_remote_bytes"
            )
            path_name = urllib.parse.urlparse(location).path
            return self._in_memory(data, modality, location, mime=mime, file_name=path_name)
        if lowered.startswith("file:"):
            parsed = urllib.parse.urlparse(location)
            if parsed.netloc not in ("", "localhost"):
                raise MediaError(location, "file:// URIs on other hosts are not supported")
            path = Path(urllib.request.url2pathname(parsed.path))
        elif "://" in location:
            raise MediaError(
                location,
                f"unsupported URI scheme {location.split('://', 1)[0]!r}",
                "use a path, file://, data: or http(s):// URI",
            )
        else:
            path = Path(location).expanduser()
        if not self.allow_local_files:
            raise MediaError(location, "local files are disabled", "pass allow_local_files=True")
        if not path.is_file():
            problem = "is not a regular file" if path.exists() else "file not found"
            raise MediaError(location, problem, "check the path")
        if modality is None:
            modality = guess_file_modality(path)
            if modality is None:
                raise MediaError(location, "unknown media type", _MODALITY_FIX)
        return _Source(_check_modality(modality, location), location, path=path)

    def _in_memory(
        self,
        data: bytes,
        modality: str | None,
        name: str,
        *,
        mime: str | None,
        file_name: str | None = None,
    ) -> _Source:
        if modality is None:
            header = data[:_NPY_HEADER_BYTES]
            modality = guess_modality(file_name, mime_type=mime, header=header)
            if modality is None and mime is not None and file_name:
                modality = guess_modality(file_name, header=header)
            if modality is None:
                raise MediaError(name, f"unknown media type {mime!r}", _MODALITY_FIX)
        return _Source(_check_modality(modality, name), name, data=data)

    # -- encoding ------------------------------------------------------------------------

    def _checkpoint_path(self) -> Path:
        return resolve_imagebind_checkpoint(self.checkpoint, allow_download=self.allow_download)

    def _device(self) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def _embed(self, sources: list[_Source]) -> list[list[float]]:
        """Vectors for ``sources`` in input order, encoded in per-modality batches."""
        if not sources:
            return []
        encoder = _encoder_for(self._checkpoint_path(), self._device(), _DTYPES[self.dtype])
        cache = None
        if self.cache_dir is not None:
            cache = _VectorCache(self.cache_dir.expanduser() / self.model_fingerprint())
        groups: dict[str, list[int]] = {}
        for index, source in enumerate(sources):
            groups.setdefault(source.modality, []).append(index)
        vectors: list[torch.Tensor] = [torch.empty(0)] * len(sources)
        for modality, indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                found = _embed_batch(encoder, cache, modality, [sources[i] for i in batch])
                for index, vector in zip(batch, found, strict=True):
                    vectors[index] = vector
        stacked = torch.stack(vectors)
        if self.normalize:
            stacked = F.normalize(stacked, dim=-1)
        return stacked.tolist()


_MODALITY_FIX = (
    "use a known extension (.png/.jpg, .wav/.mp3, .mp4/.webm, x.depth.png, x.thermal.png, "
    "x.imu.npy) or pass (data, modality)"
)


def _check_modality(modality: str, name: str) -> str:
    if modality not in MEDIA_MODALITIES:
        raise MediaError(
            name, f"unknown modality {modality!r}", f"use {', '.join(MEDIA_MODALITIES)}"
        )
    return modality


def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else f"{text[:40]}...")


def _embed_batch(
    encoder: _Encoder, cache: _VectorCache | None, modality: str, sources: list[_Source]
) -> list[torch.Tensor]:
    """Raw vectors of one same-modality batch; only cache misses reach the encoder."""
    keys = [source.digest() for source in sources] if cache is not None else []
    found = [cache.get(key) for key in keys] if cache is not None else [None] * len(sources)
    missing = [i for i, vector in enumerate(found) if vector is None]
    if missing:
        # Imported on first use: the media loaders pull in PyAV, soundfile and the tokenizer,
        # which a process that only builds the class (or embeds from cache) never needs.
        data_module = importlib.import_module("langchain_pandagpt.imagebind.data")
        loader = getattr(data_module, _LOADERS[modality])
        inputs = [sources[i].loader_input() for i in missing]
        encoded = encoder.encode(modality, loader(inputs, **encoder.preprocess_kwargs(modality)))
        for i, vector in zip(missing, encoded, strict=True):
            found[i] = vector
            if cache is not None:
                cache.put(keys[i], vector)
    return [vector if vector is not None else torch.empty(0) for vector in found]
