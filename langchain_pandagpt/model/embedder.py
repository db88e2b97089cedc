"""ImageBind embeddings without LangChain: resolved inputs in, one vector per input out.

:class:`MediaEmbedder` groups inputs per modality, runs the encoder in batches, keeps the
on-disk vector cache and L2-normalises. The HTTP server embeds with it directly;
``ImageBindEmbeddings`` (the LangChain surface) resolves its many input forms with
:mod:`langchain_pandagpt.media` and hands the result here.

The encoder is injected (:class:`MediaEncoder`), so any holder of ImageBind towers can serve:
:class:`CheckpointEncoder` loads towers from a checkpoint file on first use, or adopts the
towers of a loaded PandaGPT model (the process registry,
:func:`langchain_pandagpt.generation.registry.shared_encoder`, hands out one per file, device
and dtype, so chat and search share one ImageBind).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F

from langchain_pandagpt.downloads import sha256_of
from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.imagebind.checkpoint import load_imagebind
from langchain_pandagpt.imagebind.model import ImageBindModel
from langchain_pandagpt.media.hashing import content_digest
from langchain_pandagpt.media.item import IMAGEBIND_TOWER, MediaItem
from langchain_pandagpt.media.loaders import load_batch, preprocess_kwargs

logger = logging.getLogger(__name__)

#: Bump when preprocessing changes so that old on-disk vectors are never reused.
CACHE_FORMAT: Final = "imagebind-embeddings-v1"
#: Folder of the vector cache's keys (media/hashing digests) inside a model's folder: a new
#: key format gets a new folder, so an entry is never read under another format's key.
_KEY_FORMAT: Final = "content-digest-v1"
_TOWERS: Final[dict[str, str]] = {"text": "text", **IMAGEBIND_TOWER}

#: One input of :meth:`MediaEmbedder.embed`: a resolved media item, or a text (a ``str`` is
#: always text, never a path: resolve paths with :mod:`langchain_pandagpt.media.sources`).
EmbedderInput: TypeAlias = MediaItem | str


class MediaEncoder(Protocol):
    """What :class:`MediaEmbedder` needs from an ImageBind encoder."""

    @property
    def fingerprint(self) -> str:
        """Identifies the vectors it produces (weights, dtype, preprocessing); keys the cache."""
        ...

    def encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        """Raw embeddings (official logit scales included) of a loader batch, float32 on the
        CPU; ``modality`` is ``text`` or a media kind."""
        ...

    def preprocess_kwargs(self, modality: str) -> dict[str, Any]:
        """Loader options that depend on the encoder's config."""
        ...


# --------------------------------------------------------------------------------------------
# The checkpoint-file encoder
# --------------------------------------------------------------------------------------------


@dataclass
class CheckpointEncoder:
    """One ImageBind checkpoint on one device and dtype, with towers loaded on first use.

    Shared by every user of the same settings (the registry's ``shared_encoder``). ``lock``
    serialises loading and forward passes: decoding media runs in parallel, the encoder runs
    one batch at a time, which keeps memory bounded and avoids oversubscribing CPU threads.
    Towers adopted from a PandaGPT model run under that model's lock instead, so the engine
    and the embeddings never use the same ImageBind at once.
    """

    path: Path
    device: torch.device
    dtype: torch.dtype
    lock: threading.RLock | threading.Lock = field(default_factory=threading.RLock)
    towers: dict[str, ImageBindModel] = field(default_factory=dict)

    def adopt(self, imagebind: ImageBindModel, lock: threading.RLock | threading.Lock) -> None:
        """Serve ``imagebind``'s towers (a loaded model's) instead of loading copies; towers
        loaded before are dropped, so their memory is freed."""
        with self.lock:
            self.towers = {tower: imagebind for tower in imagebind.modalities}
            self.lock = lock

    @property
    def fingerprint(self) -> str:
        """The checkpoint's SHA-256 (once per process and file version), the dtype and the
        preprocessing version; not the device (CPU and GPU agree to float tolerance)."""
        digest = _checkpoint_digest(self.path)
        dtype = str(self.dtype).removeprefix("torch.")
        return hashlib.sha256(f"{CACHE_FORMAT}|{digest}|{dtype}".encode()).hexdigest()

    def _tower(self, tower: str) -> ImageBindModel:
        model = self.towers.get(tower)
        if model is None:
            model = load_imagebind(
                self.path, modalities=[tower], device=self.device, dtype=self.dtype
            )
            self.towers[tower] = model
        return model

    def encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        tower = _TOWERS[modality]
        with self.lock, torch.inference_mode():
            return self._tower(tower).encode(tower, batch).float().cpu()

    def preprocess_kwargs(self, modality: str) -> dict[str, Any]:
        if modality != "audio":
            return {}
        with self.lock:
            config = self._tower("audio").config
        return preprocess_kwargs(modality, config)


def _checkpoint_digest(path: Path) -> str:
    """SHA-256 of the checkpoint file, computed once per process and file version."""
    stat = path.stat()
    return _digest_of_version(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _digest_of_version(path: str, size: int, mtime_ns: int) -> str:
    return sha256_of(Path(path))


# --------------------------------------------------------------------------------------------
# The on-disk vector cache
# --------------------------------------------------------------------------------------------


class VectorCache:
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
# The embedder
# --------------------------------------------------------------------------------------------


class MediaEmbedder:
    """Vectors for texts and resolved media items, batched per modality, cached, normalised.

    ``normalize=True`` L2-normalises every vector (ImageBind's raw outputs carry per-modality
    logit scales that make distances depend on which modalities are compared). With
    ``cache_dir``, raw vectors are stored under the encoder's fingerprint and each input's
    :func:`~langchain_pandagpt.media.hashing.content_digest`, so nothing is encoded twice.
    """

    def __init__(
        self,
        encoder: MediaEncoder,
        *,
        batch_size: int = 16,
        cache_dir: str | os.PathLike[str] | None = None,
        normalize: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.encoder = encoder
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.normalize = normalize

    def embed(self, inputs: Sequence[EmbedderInput]) -> torch.Tensor:
        """``(len(inputs), width)`` float32 vectors in input order (``(0, 0)`` for none)."""
        if not inputs:
            return torch.empty(0, 0)
        groups: dict[str, list[int]] = {}
        for index, value in enumerate(inputs):
            groups.setdefault(_modality_of(value), []).append(index)
        cache = None
        if self.cache_dir is not None:
            cache = VectorCache(self.cache_dir / self.encoder.fingerprint / _KEY_FORMAT)
        vectors: list[torch.Tensor] = [torch.empty(0)] * len(inputs)
        for modality, indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                found = self._embed_batch(cache, modality, [inputs[i] for i in batch])
                for index, vector in zip(batch, found, strict=True):
                    vectors[index] = vector
        stacked = torch.stack(vectors)
        return F.normalize(stacked, dim=-1) if self.normalize else stacked

    def _embed_batch(
        self, cache: VectorCache | None, modality: str, inputs: list[EmbedderInput]
    ) -> list[torch.Tensor]:
        """Raw vectors of one same-modality batch; only cache misses reach the encoder."""
        keys = [_digest(value) for value in inputs] if cache is not None else []
        found = [cache.get(key) for key in keys] if cache is not None else [None] * len(inputs)
        missing = [i for i, vector in enumerate(found) if vector is None]
        if missing:
            options = self.encoder.preprocess_kwargs(modality)
            batch = load_batch(modality, [inputs[i] for i in missing], **options)
            encoded = self.encoder.encode(modality, batch)
            for i, vector in zip(missing, encoded, strict=True):
                found[i] = vector
                if cache is not None:
                    cache.put(keys[i], vector)
            logger.debug(
                "encoded %d %s inputs (%d from cache)",
                len(missing),
                modality,
                len(inputs) - len(missing),
            )
        return [vector if vector is not None else torch.empty(0) for vector in found]


def _modality_of(value: EmbedderInput) -> str:
    if isinstance(value, str):
        return "text"
    if not isinstance(value, MediaItem):
        raise TypeError(
            f"MediaEmbedder takes MediaItems and texts, not {type(value).__name__}; resolve "
            "paths, URLs and blocks with langchain_pandagpt.media.sources first"
        )
    if value.is_embedding:
        raise MediaError(value.describe(), "is already an embedding", "use its data directly")
    return value.modality


def _digest(value: EmbedderInput) -> str:
    return content_digest("text", value) if isinstance(value, str) else value.content_hash()
