"""ImageBind as LangChain ``Embeddings``: text, images, audio, video, depth, thermal and IMU.

Every modality lands in ImageBind's one joint space, so a text query retrieves images, sounds
or clips, and any medium can query any other. Besides the standard ``embed_documents`` /
``embed_query`` (text), :class:`ImageBindEmbeddings` offers the informal multimodal convention
that Chroma and LanceDB look for (``embed_image(uris)``) plus ``embed_audio``, ``embed_video``
and a generic ``embed_media`` for every modality.

This module is the LangChain surface only: inputs are resolved by
:mod:`langchain_pandagpt.media` (one policy, one detection, one digest) and embedded by the
framework-free :class:`~langchain_pandagpt.model.embedder.MediaEmbedder`.

Example:
    .. code-block:: python

        from langchain_pandagpt.embeddings import ImageBindEmbeddings

        embeddings = ImageBindEmbeddings(checkpoint="imagebind_huge.safetensors", cache_dir=".emb")
        query = embeddings.embed_query("a dog barking")
        media = embeddings.embed_media(["dog.jpg", "bark.wav", "walk.imu.npy"])
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Self, TypeAlias

import numpy as np
import torch
from langchain_core.embeddings import Embeddings
from langchain_core.runnables.config import run_in_executor
from pydantic import BaseModel, ConfigDict, Field, model_validator

from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.generation.registry import shared_encoder
from langchain_pandagpt.imagebind.checkpoint import resolve_imagebind_checkpoint
from langchain_pandagpt.media.detect import (
    NPY_MIME_TYPE,
    guess_file_modality,
    guess_mime_type,
    guess_modality,
)
from langchain_pandagpt.media.item import EMBEDDING_MODALITIES, MediaItem
from langchain_pandagpt.media.policy import (
    DEFAULT_REMOTE_MAX_BYTES,
    DEFAULT_REMOTE_TIMEOUT_S,
    MediaPolicy,
)
from langchain_pandagpt.media.sources import block_to_media_item, resolve_data, resolve_location
from langchain_pandagpt.model.bundle import imagebind_checkpoint, imagebind_dtype, resolve_device
from langchain_pandagpt.model.embedder import CheckpointEncoder, EmbedderInput, MediaEmbedder

if TYPE_CHECKING:
    from langchain_pandagpt.chat_models import ChatPandaGPT

#: Environment variable naming the default bundle (as for ``ChatPandaGPT`` and the CLI).
BUNDLE_ENV: Final = "PANDAGPT_BUNDLE"

__all__ = [
    "EMBEDDING_MODALITIES",
    "NPY_MIME_TYPE",
    "ImageBindEmbeddings",
    "MediaInput",
    "guess_file_modality",
    "guess_mime_type",
    "guess_modality",
]

_DTYPES: Final[dict[str, torch.dtype]] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

MediaData: TypeAlias = str | os.PathLike[str] | bytes | np.ndarray | torch.Tensor
#: One input of :meth:`ImageBindEmbeddings.embed_media`: a path or URI, a ``MediaItem``, a
#: ``(data, modality)`` pair, or a LangChain data content block (``{"type": "image", ...}``).
MediaInput: TypeAlias = (
    str | os.PathLike[str] | MediaItem | tuple[MediaData, str] | Mapping[str, Any]
)


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
    ``allow_remote_media=True``, ``http(s)://`` URLs (from public addresses or
    ``remote_allow_hosts``, capped at ``max_remote_bytes`` and ``remote_timeout``).
    ``allow_local_files=False`` refuses local paths, e.g. when URIs come from untrusted users;
    ``media_root`` confines them to a folder. These fields are the library's one
    :class:`~langchain_pandagpt.media.policy.MediaPolicy`, under this class's names.

    With ``cache_dir`` set, every vector is stored on disk under the SHA-256 of its content,
    modality and a fingerprint of the checkpoint file and dtype (not the device: CPU and GPU
    agree to float tolerance): a collection is never encoded twice, and changing checkpoints
    never returns stale vectors.

    Every ``aembed_*`` method (``aembed_documents`` and ``aembed_query`` come from
    ``Embeddings``) runs its sync twin in a worker thread, so the event loop never blocks.
    """

    model_config = ConfigDict(extra="forbid")

    checkpoint: Path | None = None
    """ImageBind checkpoint (``.safetensors`` or the official ``.pth``) or a folder holding
    one. ``None``: the ImageBind of ``bundle``, else of the ``PANDAGPT_BUNDLE`` bundle, else the
    user cache (``$PANDAGPT_CACHE/imagebind``)."""
    bundle: Path | None = None
    """A PandaGPT bundle whose ImageBind to use (when ``checkpoint`` is not given). A chat model
    of the same bundle, device and precision in this process shares its towers."""
    device: str | None = None
    """cpu, cuda, cuda:N, or ``None``/auto: CUDA when available, else the CPU."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Encoder precision; auto is the library's one rule (float16 on CUDA, float32 on CPU).
    Prefer ``bfloat16`` over ``float16`` on CPUs."""
    allow_download: bool = False
    """Download ``imagebind_huge`` into the user cache when no checkpoint or bundle is given
    and the file is missing."""
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
    max_remote_bytes: int = Field(default=DEFAULT_REMOTE_MAX_BYTES, gt=0)
    """Largest remote file fetched, in bytes."""
    remote_timeout: float = Field(default=DEFAULT_REMOTE_TIMEOUT_S, gt=0)
    """Seconds for a whole remote fetch (redirects and body included)."""
    media_root: Path | None = None
    """Confine local files to this folder (relative paths are relative to it)."""
    remote_allow_hosts: tuple[str, ...] = ()
    """Hosts and networks (``"10.0.0.0/8"``) remote fetches may reach although not public."""

    @model_validator(mode="after")
    def _check_settings(self) -> Self:
        """Fail at construction, not at the first call: the device must exist and the
        checkpoint (or bundle) be there. Loading stays lazy."""
        self._device()
        self._media_policy()
        if self.checkpoint is not None or self._bundle() is not None:
            self._checkpoint_path()
        return self

    @classmethod
    def from_chat_model(cls, chat_model: ChatPandaGPT, **kwargs: Any) -> ImageBindEmbeddings:
        """Embeddings with the ImageBind of ``chat_model`` (same bundle, device and dtype), so
        one process holds one ImageBind for chat and search."""
        device = resolve_device(chat_model.device)
        dtype = imagebind_dtype(chat_model.precision, device)
        names = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
        settings: dict[str, Any] = {
            "bundle": Path(chat_model.model),
            "device": str(device),
            "dtype": names[dtype],
            "allow_download": chat_model.allow_download,
        }
        return cls(**{**settings, **kwargs})

    # -- text (the standard Embeddings interface) ----------------------------------------

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed texts with ImageBind's text tower (77 CLIP tokens, longer texts truncated)."""
        return self._embed(list(texts))

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
        policy = self._media_policy()
        return self._embed([self._resolve(item, index, policy) for index, item in enumerate(items)])

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
        return self._encoder().fingerprint

    def _media_policy(self) -> MediaPolicy:
        """This instance's media settings as the library's one :class:`MediaPolicy`."""
        return MediaPolicy(
            allow_local_files=self.allow_local_files,
            allow_remote_media=self.allow_remote_media,
            remote_media_max_bytes=self.max_remote_bytes,
            remote_media_timeout=self.remote_timeout,
            max_bytes_setting="max_remote_bytes",
            media_root=self.media_root,
            remote_allow_hosts=self.remote_allow_hosts,
        )

    # -- input resolution ----------------------------------------------------------------

    @staticmethod
    def _resolve(item: MediaInput, index: int, policy: MediaPolicy) -> EmbedderInput:
        """A media item, or the text of a ``(text, "text")`` pair."""
        if isinstance(item, MediaItem):
            if item.is_embedding:
                raise MediaError(
                    item.describe(), "is already an embedding", "use its data directly"
                )
            label = item.name or _item_label(item.data, index, item.modality)
            return resolve_data(item.data, item.modality, policy, label=label)
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
                return data
            return resolve_data(data, modality, policy, label=_item_label(data, index, modality))
        if isinstance(item, Mapping):
            return block_to_media_item(item, policy, f"items[{index}] ({item.get('type')} block)")
        if isinstance(item, str | os.PathLike):
            return resolve_location(os.fspath(item), policy)
        raise MediaError(
            f"<{type(item).__name__}>",
            "unsupported input type",
            "pass a path or URI, a MediaItem, a (data, modality) pair or a content block",
        )

    # -- encoding ------------------------------------------------------------------------

    def _bundle(self) -> Path | None:
        if self.bundle is not None:
            return self.bundle
        from_env = os.environ.get(BUNDLE_ENV)
        return Path(from_env) if from_env and self.checkpoint is None else None

    def _checkpoint_path(self) -> Path:
        bundle = self._bundle()
        if self.checkpoint is None and bundle is not None:
            return imagebind_checkpoint(bundle, allow_download=self.allow_download)
        return resolve_imagebind_checkpoint(self.checkpoint, allow_download=self.allow_download)

    def _device(self) -> torch.device:
        return resolve_device("auto" if self.device is None else self.device)

    def _dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return imagebind_dtype("auto", self._device())
        return _DTYPES[self.dtype]

    def _encoder(self) -> CheckpointEncoder:
        """The process's shared encoder of this configuration (construction loads nothing)."""
        return shared_encoder(self._checkpoint_path(), self._device(), self._dtype())

    def _embed(self, inputs: list[EmbedderInput]) -> list[list[float]]:
        """Vectors for ``inputs`` in input order, encoded in per-modality batches."""
        if not inputs:
            return []
        embedder = MediaEmbedder(
            self._encoder(),
            batch_size=self.batch_size,
            cache_dir=self.cache_dir,
            normalize=self.normalize,
        )
        vectors: list[list[float]] = embedder.embed(inputs).tolist()
        return vectors


def _item_label(data: object, index: int, modality: str) -> str | None:
    """``items[3] (audio)`` for in-memory data; paths and URLs name themselves."""
    return None if isinstance(data, str | os.PathLike) else f"items[{index}] ({modality})"
