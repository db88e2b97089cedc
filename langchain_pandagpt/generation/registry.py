"""The one registry of process-wide shared objects: models, engines, encoders and grammars.

A 7B PandaGPT is 14 GB in fp16, so every LangChain object, the server and the CLI that name
the same bundle, precision and device must share one copy, with one generation engine whose
worker batches all their requests. ImageBind (2.2 GB in fp16) is shared the same way: one
encoder per checkpoint file, device and dtype, and when a loaded model has that ImageBind, the
encoder serves the model's towers under the model's lock, so chat and embeddings in one
process hold one ImageBind. Grammars are shared too (compiling a schema and its token masks is
costly). A server or agent runs for days, so everything here is bounded or explicitly released:

* models and their engines stay until :func:`clear` (or :func:`release_model`) closes the
  engines and drops them; nothing in the registry keeps a released model alive;
* encoders live in an LRU of :data:`ENCODER_CACHE_SIZE` (a replaced checkpoint file is a new
  key), grammars in an LRU of :data:`GRAMMAR_CACHE_SIZE` schemas, and the token-mask tables a
  grammar builds belong to the grammar, so an evicted schema frees all of it.

Why not weak references: an engine's worker thread holds its engine, and the engine holds its
model, so a weak-keyed map from model to engine can never let go. Explicit lifetimes are the
only honest rule for objects whose threads reference them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import torch

from langchain_pandagpt.generation.engine import GenerationEngine
from langchain_pandagpt.model.bundle import (
    PrecisionChoice,
    check_precision,
    load_pandagpt,
    resolve_device,
    resolve_precision,
)
from langchain_pandagpt.model.embedder import CheckpointEncoder
from langchain_pandagpt.model.manifest import manifest_path
from langchain_pandagpt.model.modeling import PandaGPTModel
from langchain_pandagpt.structured import JsonGrammar

logger = logging.getLogger(__name__)

#: Compiled JSON-schema grammars kept (least recently used dropped first).
GRAMMAR_CACHE_SIZE: Final = 64
#: ImageBind encoders kept (checkpoint file version x device x dtype).
ENCODER_CACHE_SIZE: Final = 4

_ModelKey = tuple[str, str, str, bool]
_V = TypeVar("_V")


@dataclass
class _ModelEntry:
    model: PandaGPTModel
    engine: GenerationEngine | None = None


class _LRU(OrderedDict[str, _V]):
    """A size-bounded mapping; callers hold the registry lock."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def get_or_create(self, key: str, create: Callable[[], _V]) -> _V:
        value = self.get(key)
        if value is None:
            value = self[key] = create()
            while len(self) > self.capacity:
                self.popitem(last=False)
        else:
            self.move_to_end(key)
        return value


class Registry:
    """Process-wide shared models, engines and grammars (use the module functions)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[_ModelKey, _ModelEntry] = {}
        self._loading: dict[_ModelKey, threading.Lock] = {}
        self._grammars: _LRU[JsonGrammar] = _LRU(GRAMMAR_CACHE_SIZE)
        self._encoders: _LRU[CheckpointEncoder] = _LRU(ENCODER_CACHE_SIZE)

    # -- models and engines --------------------------------------------------------------

    def model(
        self,
        bundle: str | os.PathLike[str],
        *,
        precision: PrecisionChoice = "auto",
        device: str | torch.device = "auto",
        allow_download: bool = False,
        merge_lora: bool = False,
    ) -> PandaGPTModel:
        """The shared model of (bundle, precision, device, merge_lora); loads it once, even
        when several threads ask at the same time (different keys load in parallel)."""
        target = resolve_device(device)
        resolved = resolve_precision(precision, target)
        key = (str(manifest_path(bundle).resolve()), resolved, str(target), merge_lora)
        with self._lock:
            entry = self._models.get(key)
            if entry is not None:
                return entry.model
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                entry = self._models.get(key)
            if entry is None:
                logger.info("loading %s (%s on %s)", key[0], resolved, target)
                model = load_pandagpt(
                    bundle,
                    precision=resolved,
                    device=target,
                    allow_download=allow_download,
                    merge_lora=merge_lora,
                )
                with self._lock:
                    entry = self._models.setdefault(key, _ModelEntry(model))
                    self._loading.pop(key, None)
                self._share_imagebind(entry.model)
        return entry.model

    def engine(self, model: PandaGPTModel) -> GenerationEngine:
        """The one engine of ``model`` in this process (its worker batches every caller).

        A model that was not loaded through the registry is adopted: it and its engine stay
        until :func:`clear` or :func:`release_model`.
        """
        with self._lock:
            entry = next((e for e in self._models.values() if e.model is model), None)
            if entry is None:
                key = (f"<adopted {id(model):x}>", str(model.dtype), str(model.device), False)
                entry = self._models[key] = _ModelEntry(model)
                adopted = True
            else:
                adopted = False
            if entry.engine is None:
                entry.engine = GenerationEngine(model)
            engine = entry.engine
        if adopted:
            self._share_imagebind(model)
        return engine

    def release_model(self, model: PandaGPTModel) -> None:
        """Closes ``model``'s shared engine and forgets the model (its memory is freed once
        no caller holds it)."""
        with self._lock:
            keys = [key for key, entry in self._models.items() if entry.model is model]
            entries = [self._models.pop(key) for key in keys]
        for entry in entries:
            _close(entry)

    def models(self) -> list[PandaGPTModel]:
        with self._lock:
            return [entry.model for entry in self._models.values()]

    # -- encoders ------------------------------------------------------------------------

    def encoder(
        self, checkpoint: Path, device: torch.device, dtype: torch.dtype
    ) -> CheckpointEncoder:
        """The shared ImageBind encoder of a checkpoint file on ``device`` in ``dtype``: the
        towers of a registered model with that ImageBind, else towers loaded on first use."""
        key = _encoder_key(checkpoint, device, dtype)
        with self._lock:
            encoder = self._encoders.get_or_create(
                key, lambda: CheckpointEncoder(checkpoint, device, dtype)
            )
            owner = next(
                (e.model for e in self._models.values() if _has_imagebind(e.model, key)), None
            )
        if owner is not None and not _serves(encoder, owner):
            encoder.adopt(owner.imagebind, owner.lock)
        return encoder

    def _share_imagebind(self, model: PandaGPTModel) -> None:
        """An encoder made before ``model`` loaded drops its own towers for the model's."""
        key = _imagebind_key(model)
        with self._lock:
            encoder = self._encoders.get(key) if key is not None else None
        if encoder is not None and not _serves(encoder, model):
            encoder.adopt(model.imagebind, model.lock)
            logger.info("embeddings now share the ImageBind of %s", model.manifest.name)

    # -- grammars ------------------------------------------------------------------------

    def grammar(self, schema: Mapping[str, Any]) -> JsonGrammar:
        """The compiled grammar of a JSON schema (schemas that fail to compile raise here)."""
        key = json.dumps(schema, sort_keys=True)
        with self._lock:
            found = self._grammars.get(key)
            if found is not None:
                self._grammars.move_to_end(key)
                return found
        grammar = JsonGrammar(schema)  # compiled outside the lock: it can take a while
        with self._lock:
            return self._grammars.get_or_create(key, lambda: grammar)

    def grammar_count(self) -> int:
        with self._lock:
            return len(self._grammars)

    # -- everything ----------------------------------------------------------------------

    def clear(self) -> None:
        """Closes every shared engine and forgets every model and grammar."""
        with self._lock:
            entries = list(self._models.values())
            self._models.clear()
            self._grammars.clear()
            self._encoders.clear()
        for entry in entries:
            _close(entry)
        logger.info("registry cleared (%d models released)", len(entries))


def _encoder_key(checkpoint: Path, device: torch.device, dtype: torch.dtype) -> str:
    """One checkpoint file version (a replaced file is a new key) on a device in a dtype."""
    stat = checkpoint.stat()
    return f"{checkpoint.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{device}|{dtype}"


def _imagebind_key(model: PandaGPTModel) -> str | None:
    path = model.imagebind_path
    if path is None or not path.exists():
        return None
    return _encoder_key(path, model.imagebind.device, model.imagebind.dtype)


def _has_imagebind(model: PandaGPTModel, key: str) -> bool:
    return _imagebind_key(model) == key


def _serves(encoder: CheckpointEncoder, model: PandaGPTModel) -> bool:
    return any(tower is model.imagebind for tower in encoder.towers.values())


def _close(entry: _ModelEntry) -> None:
    if entry.engine is not None:
        entry.engine.close()
        entry.engine = None


_REGISTRY: Final = Registry()


def registry() -> Registry:
    """The process's registry."""
    return _REGISTRY


def get_shared_model(
    bundle: str | os.PathLike[str],
    *,
    precision: PrecisionChoice = "auto",
    device: str | torch.device = "auto",
    allow_download: bool = False,
    merge_lora: bool = False,
) -> PandaGPTModel:
    """Like :func:`~langchain_pandagpt.model.bundle.load_pandagpt`, but one copy per (bundle,
    precision, device) per process, shared by every chat model, embeddings object and server
    that names it."""
    check_precision(precision)
    return _REGISTRY.model(
        bundle,
        precision=precision,
        device=device,
        allow_download=allow_download,
        merge_lora=merge_lora,
    )


def shared_engine(model: PandaGPTModel) -> GenerationEngine:
    """The one :class:`GenerationEngine` of ``model`` in this process."""
    return _REGISTRY.engine(model)


def shared_encoder(checkpoint: Path, device: torch.device, dtype: torch.dtype) -> CheckpointEncoder:
    """The one ImageBind encoder of a checkpoint file, device and dtype in this process (a
    loaded model's towers when it has that ImageBind)."""
    return _REGISTRY.encoder(checkpoint, device, dtype)


def shared_grammar(schema: Mapping[str, Any]) -> JsonGrammar:
    """The compiled :class:`JsonGrammar` of ``schema`` (an LRU of recent schemas)."""
    return _REGISTRY.grammar(schema)


def release_model(model: PandaGPTModel) -> None:
    """Closes ``model``'s shared engine and drops it from the registry."""
    _REGISTRY.release_model(model)


def clear() -> None:
    """Releases every shared model, engine and grammar of this process."""
    _REGISTRY.clear()
