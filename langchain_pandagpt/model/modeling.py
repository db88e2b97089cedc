"""PandaGPT: ImageBind embeds each media item, a linear projection turns it into one LLM token.

:class:`PandaGPTModel` holds the loaded parts and implements the two calls that the engine and
the trainer build ``inputs_embeds`` from (see docs/architecture.md): ``encode_media`` and
``embed_tokens``. Build one with :func:`langchain_pandagpt.model.bundle.load_pandagpt`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import nn

from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.imagebind.model import ImageBindModel
from langchain_pandagpt.media.item import MediaItem
from langchain_pandagpt.media.loaders import load_batch, preprocess_kwargs
from langchain_pandagpt.model.manifest import BundleManifest

if TYPE_CHECKING:  # peft and transformers' model classes load with a model, not on import
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

#: How many ImageBind embeddings :meth:`PandaGPTModel.embed_media` keeps, by content hash.
DEFAULT_MEDIA_CACHE_SIZE = 256


class PandaGPTModel:
    """ImageBind + projection + LLM (with LoRA) + tokenizer, on one device.

    Attributes:
        manifest: the bundle's :class:`~langchain_pandagpt.model.manifest.BundleManifest`.
        tokenizer: the LLM's Hugging Face tokenizer.
        llm: the causal LM with LoRA applied (a ``peft.PeftModel`` unless LoRA was merged);
            call it with ``inputs_embeds``, ``attention_mask``, ``position_ids``,
            ``past_key_values`` and ``use_cache=True``.
        imagebind: the frozen encoder, with the towers the manifest asks for.
        projection: ``nn.Linear(ImageBind width, hidden_size)`` (width 1024 for real bundles).
        imagebind_path: the ImageBind checkpoint file, when known.
        lock: serialises use of the modules across threads: ImageBind runs (:meth:`embed_media`)
            and the projection (:meth:`encode_media`) hold it, and so does the generation
            engine's worker while it encodes media and runs forwards. Reentrant; embeddings
            that share :attr:`imagebind` (the registry's encoders) hold it too.
    """

    def __init__(
        self,
        *,
        manifest: BundleManifest,
        tokenizer: PreTrainedTokenizerBase,
        llm: PreTrainedModel | PeftModel,
        imagebind: ImageBindModel,
        projection: nn.Linear,
        media_cache_size: int = DEFAULT_MEDIA_CACHE_SIZE,
        imagebind_path: Path | None = None,
    ) -> None:
        self.manifest = manifest
        #: The checkpoint file :attr:`imagebind` was loaded from (the registry lets embeddings
        #: of the same file, device and dtype use these towers instead of a second copy).
        self.imagebind_path = imagebind_path
        self.tokenizer = tokenizer
        self.llm = llm
        self.imagebind = imagebind
        self.projection = projection
        self.media_cache_size = media_cache_size
        self._media_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._media_cache_lock = threading.Lock()
        self.lock = threading.RLock()
        self._embedding_of: tuple[object, nn.Embedding] | None = None

    # -- shape and placement -------------------------------------------------------------------

    @property
    def _input_embeddings(self) -> nn.Embedding:
        # Looked up once per LLM: through PEFT's wrappers the lookup costs more than a decode
        # step's embedding of a small model, and device/dtype ask for it at every step.
        if self._embedding_of is None or self._embedding_of[0] is not self.llm:
            self._embedding_of = (self.llm, cast(nn.Embedding, self.llm.get_input_embeddings()))
        return self._embedding_of[1]

    @property
    def device(self) -> torch.device:
        """Where inputs to :attr:`llm` go."""
        return self._input_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The LLM's compute dtype: ``inputs_embeds`` must have it (fp32 for int8/nf4 on CPU)."""
        return self._input_embeddings.weight.dtype

    @property
    def hidden_size(self) -> int:
        return int(self.llm.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.llm.config.num_hidden_layers)

    @property
    def vocab_size(self) -> int:
        """Rows of the LLM's embedding (may exceed ``len(tokenizer)``)."""
        return int(self._input_embeddings.num_embeddings)

    @property
    def bos_token_id(self) -> int:
        """The id put before the prompt: the manifest's override, else the tokenizer's."""
        if self.manifest.bos_token_id is not None:
            return self.manifest.bos_token_id
        return int(self.tokenizer.bos_token_id)

    # -- the engine contract -------------------------------------------------------------------

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (any shape) -> ``(..., hidden)`` embeddings in the LLM's dtype and device."""
        return self._input_embeddings(ids.to(self.device)).to(self.dtype)

    def encode_media(self, items: Sequence[MediaItem]) -> torch.Tensor:
        """One projected LLM token per item: ``(len(items), hidden)`` in :attr:`dtype`.

        The projection bias is added per item, so the reference's multi-modality sum
        ``W·Σe + k·b`` is the sum of these rows. Gradients flow into :attr:`projection` when
        enabled (training); ImageBind is always run without them.
        """
        weight = self.projection.weight
        embeddings = self.embed_media(items).to(device=weight.device, dtype=weight.dtype)
        with self.lock:
            return self.projection(embeddings).to(device=self.device, dtype=self.dtype)

    def embed_media(self, items: Sequence[MediaItem]) -> torch.Tensor:
        """ImageBind embeddings ``(len(items), width)`` with the manifest's scale rule, cached.

        This is what the projection consumes, and what an ``is_embedding=True`` item must hold
        (the training feature cache stores these). Each modality is loaded and encoded as one
        batch; identical items are encoded once.
        """
        if not items:
            return torch.empty(0, self.imagebind.config.out_embed_dim, device=self.imagebind.device)
        keys = [item.content_hash() for item in items]
        found: dict[str, torch.Tensor] = {}
        with self._media_cache_lock:
            for key in keys:
                if key in self._media_cache:
                    self._media_cache.move_to_end(key)
                    found[key] = self._media_cache[key]
        pending: dict[str, dict[str, MediaItem]] = defaultdict(dict)
        for key, item in zip(keys, items, strict=True):
            if key in found:
                continue
            if item.is_embedding:
                found[key] = self._given_embedding(item)
            else:
                pending[item.modality][key] = item
        computed: dict[str, torch.Tensor] = {}
        for modality, group in pending.items():
            vectors = self._run_imagebind(modality, list(group.values()))
            computed.update(zip(group, vectors, strict=True))
        if computed:
            with self._media_cache_lock:
                self._media_cache.update(computed)
                while len(self._media_cache) > self.media_cache_size:
                    self._media_cache.popitem(last=False)
        found.update(computed)
        return torch.stack([found[key] for key in keys])

    def clear_media_cache(self) -> None:
        with self._media_cache_lock:
            self._media_cache.clear()

    # -- helpers -------------------------------------------------------------------------------

    @torch.no_grad()
    def _run_imagebind(self, modality: str, items: list[MediaItem]) -> torch.Tensor:
        tower = items[0].tower
        if tower not in self.imagebind.modalities:
            raise MediaError(
                items[0].describe(),
                f"this bundle's ImageBind has no {tower} tower",
                "add it to imagebind_towers in pandagpt.json",
            )
        options = preprocess_kwargs(modality, self.imagebind.config)
        batch = load_batch(modality, items, device=self.imagebind.device, **options)
        scaled = self.manifest.applies_logit_scale(tower)
        with self.lock:  # decoding the files above needs no lock; the encoder does
            return self.imagebind.encode(tower, batch, logit_scale=scaled)

    def _given_embedding(self, item: MediaItem) -> torch.Tensor:
        width = self.imagebind.config.out_embed_dim
        data = item.data
        if not isinstance(data, np.ndarray | torch.Tensor):
            raise MediaError(item.describe(), "an embedding item must hold an array or tensor")
        vector = torch.as_tensor(data).detach().reshape(-1)
        if vector.numel() != width or not vector.is_floating_point():
            raise MediaError(
                item.describe(),
                f"an embedding item must hold {width} floats, found shape {tuple(data.shape)}",
                "pass the output of PandaGPTModel.embed_media",
            )
        return vector.to(device=self.imagebind.device, dtype=self.imagebind.dtype)
