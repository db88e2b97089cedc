"""The feature cache: every media item encoded once by the frozen ImageBind, read by training.

ImageBind is frozen, so its output for a given file never changes; encoding it at every step of
every epoch would be pure waste. ``precompute`` stores each item's embedding (exactly what
:meth:`PandaGPTModel.embed_media` returns: the per-modality scale rules of the bundle applied,
before the projection) under its :meth:`MediaItem.content_hash`, so renamed or duplicated files
are encoded once and a changed file is never served a stale feature.

Layout: a directory of ``features-<uuid>.safetensors`` shards, each a flat ``{hash: (width,)}``
map, written atomically (see :mod:`training.atomic`). A crash loses at most the shard being
written; rerunning skips every hash already stored. Several processes can fill one cache at
once (each writes its own shards), which is how ``accelerate launch`` precompute works.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from langchain_pandagpt.conversation import MediaItem
from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.model.modeling import PandaGPTModel
from training.atomic import TMP_SUFFIX, publish, writing
from training.data import Problem, Sample

SHARD_GLOB = "features-*.safetensors"
#: How to make precompute write elsewhere, for storage errors.
CACHE_FIX = ("feature_cache", "--set feature_cache=DIR")


class FeatureCache:
    """Read and append access to a feature cache directory (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._shard_of: dict[str, Path] = {}
        self._handles: dict[Path, Any] = {}
        self.refresh()

    def refresh(self) -> None:
        """Indexes complete shards not seen yet (say, written by another process since)."""
        known = set(self._shard_of.values())
        for shard in sorted(set(self.root.glob(SHARD_GLOB)) - known):
            with safe_open(str(shard), framework="pt") as handle:
                self._shard_of.update(dict.fromkeys(handle.keys(), shard))

    def __len__(self) -> int:
        return len(self._shard_of)

    def __contains__(self, key: object) -> bool:
        return key in self._shard_of

    def get(self, key: str) -> torch.Tensor:
        """The stored embedding of content hash ``key`` (read from a memory-mapped shard)."""
        shard = self._shard_of[key]
        handle = self._handles.get(shard)
        if handle is None:
            handle = self._handles[shard] = safe_open(str(shard), framework="pt")
        return handle.get_tensor(key)

    def write_shard(self, features: dict[str, torch.Tensor]) -> Path:
        """Stores ``{hash: embedding}`` as a new shard, atomically; a failed write raises
        :class:`~training.atomic.StorageError` and leaves no partial shard."""
        final = self.root / f"features-{uuid.uuid4().hex}.safetensors"
        tmp = final.with_name(final.name + TMP_SUFFIX)
        tensors = {
            key: value.detach().float().cpu().contiguous() for key, value in features.items()
        }
        try:
            with writing(tmp, *CACHE_FIX):
                self.root.mkdir(parents=True, exist_ok=True)
                save_file(tensors, str(tmp), metadata={"format": "pt"})
                publish(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._shard_of.update(dict.fromkeys(tensors, final))
        return final

    def __getstate__(self) -> dict[str, Any]:
        # Memory-mapped handles do not cross process boundaries; workers reopen them.
        return {**self.__dict__, "_handles": {}}


def unique_media(samples: Iterable[Sample]) -> list[MediaItem]:
    """Each media item once (by modality and path), in a stable order every rank agrees on."""
    items = {(item.modality, str(item.data)): item for sample in samples for item in sample.media}
    return [items[key] for key in sorted(items)]


@dataclass
class PrecomputeReport:
    """What one process did: items it owned, skipped (already cached, or the same content as
    another item), encoded, and the items that failed."""

    items: int = 0
    cached: int = 0
    encoded: int = 0
    problems: list[Problem] = field(default_factory=list)


def _batches(items: Sequence[MediaItem], size: int) -> Iterator[list[MediaItem]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _embed(
    model: PandaGPTModel, keyed: list[tuple[str, MediaItem]]
) -> tuple[dict[str, torch.Tensor], list[Problem]]:
    """Embeddings by hash; a failing batch is retried item by item so a bad file fails alone."""
    try:
        vectors = model.embed_media([item for _, item in keyed])
    except MediaError as exc:
        if len(keyed) == 1:
            return {}, [Problem(keyed[0][1].describe(), exc.problem)]
        found: dict[str, torch.Tensor] = {}
        problems: list[Problem] = []
        for one in keyed:
            more, failed = _embed(model, [one])
            found.update(more)
            problems += failed
        return found, problems
    return {key: vector for (key, _), vector in zip(keyed, vectors, strict=True)}, []


def precompute(
    model: PandaGPTModel,
    items: Sequence[MediaItem],
    cache: FeatureCache,
    *,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 16,
    shard_size: int = 4096,
    progress: bool = True,
) -> PrecomputeReport:
    """Encodes this rank's slice of ``items`` (every ``world_size``-th) that is not cached yet.

    ``batch_size`` items go through ImageBind at once; a shard is written whenever
    ``shard_size`` features are pending (and at the end), so a crash loses at most that many.
    Items that cannot be read or decoded are reported, not fatal: the others still get cached.
    """
    mine = items[rank::world_size]
    report = PrecomputeReport(items=len(mine))
    pending: dict[str, torch.Tensor] = {}
    bar = tqdm(total=len(mine), desc=f"precompute[{rank}]", unit="item", disable=not progress)
    for batch in _batches(mine, batch_size):
        todo: list[tuple[str, MediaItem]] = []
        for item in batch:
            try:
                key = item.content_hash()
            except OSError as exc:
                report.problems.append(Problem(item.describe(), f"cannot be read: {exc}"))
                continue
            if key in cache or key in pending:
                report.cached += 1
            else:
                todo.append((key, item))
        if todo:
            found, failed = _embed(model, todo)
            pending.update(found)
            report.problems += failed
        bar.update(len(batch))
        if len(pending) >= shard_size:
            report.encoded += len(pending)
            cache.write_shard(pending)
            pending = {}
    if pending:
        report.encoded += len(pending)
        cache.write_shard(pending)
    bar.close()
    return report
