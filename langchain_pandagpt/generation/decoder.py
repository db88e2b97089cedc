"""Batched forward passes with a key/value cache: the engine's only contact with the LLM.

The engine lays out a batch (left padding, cached prefixes, attention mask, position ids) and
asks a :class:`KVBatch` to run the LLM over new positions. Two implementations:

* :class:`LeanKVBatch` for LLaMA-family models (LLaMA, Mistral, Qwen2): a small forward in the
  style of gpt-fast that calls the model's own submodules (so LoRA wrappers, bitsandbytes layers
  and rope scaling work unchanged) and keeps keys and values in preallocated buffers that it
  writes in place. Why not the Hugging Face forward: per call it builds masks, cache objects and
  output records in Python, which costs more than the arithmetic of a small model or of one
  decode step, and its ``DynamicCache`` concatenates the whole cache again at every step.
* :class:`HFKVBatch` for any other causal LM: the Hugging Face forward with a ``DynamicCache``.

Both give the same logits (tests pin this to float32 rounding).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeAlias, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # peft and transformers' model code load with a model, not on import
    from peft import PeftModel
    from transformers import PreTrainedModel
    from transformers.cache_utils import DynamicCache

#: Per-layer ``(keys, values)``, each ``(1, kv_heads, positions, head_dim)``.
KVCache: TypeAlias = tuple[tuple[Tensor, Tensor], ...]

#: One linear layer of the model, as a call.
Projection: TypeAlias = Callable[[Tensor], Tensor]

#: Architectures whose decoder layers are LLaMA's: pre-norm attention with q/k/v/o projections
#: and rotary embeddings, then a pre-norm MLP (biases, GQA and rope scaling live in the modules).
LEAN_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2"})


class KVBatch(Protocol):
    """The keys and values of a batch of rows, and the forward pass that extends them."""

    def forward(self, embeds: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        """Run ``embeds`` ``(rows, new, hidden)`` at ``positions`` ``(rows, new)``, appending
        their keys and values. ``mask`` ``(rows, cached + new)`` marks the real (1) and padding
        (0) positions of everything cached so far plus the new ones. Returns the float32 logits
        of each row's last position, ``(rows, vocab)``."""
        ...

    def select(self, rows: Tensor) -> None:
        """Keep only these rows (indices into the current batch), in this order."""
        ...

    def row(self, slot: int, positions: Tensor | slice) -> KVCache:
        """Copies of the keys and values of row ``slot`` at ``positions``, batch size 1."""
        ...


class Decoder(Protocol):
    def start(self, pasts: list[KVCache | None], cached: int, capacity: int) -> KVBatch:
        """A batch whose row ``i`` starts with ``pasts[i]`` left-padded to ``cached`` positions
        (zeros where ``None``); ``capacity`` is how many positions it will hold in all."""
        ...


def decoder_for(llm: PreTrainedModel | PeftModel) -> Decoder:
    """The lean decoder when the architecture is one it implements, else Hugging Face's."""
    base = _unwrap(llm)
    if LeanDecoder.supports(base):
        return LeanDecoder(base)
    return HFDecoder(llm)


def _unwrap(llm: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """The transformers model under a PEFT wrapper (its LoRA layers stay injected)."""
    from peft import PeftModel

    return cast("PreTrainedModel", llm.get_base_model() if isinstance(llm, PeftModel) else llm)


# --------------------------------------------------------------------------------------------
# Lean LLaMA-family forward
# --------------------------------------------------------------------------------------------


class LeanDecoder:
    """Runs a LLaMA-family ``*ForCausalLM`` layer by layer over its own submodules."""

    def __init__(self, model: PreTrainedModel) -> None:
        config = model.config
        self.model = model
        self.layers = list(model.model.layers)
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads or config.num_attention_heads)
        self.head_dim = int(
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """LLaMA, Mistral and Qwen2 models without a sliding attention window."""
        config = getattr(model, "config", None)
        if config is None or getattr(config, "model_type", None) not in LEAN_MODEL_TYPES:
            return False
        if getattr(config, "sliding_window", None) and getattr(
            config, "use_sliding_window", config.model_type == "mistral"
        ):
            return False
        inner = getattr(model, "model", None)
        return all(hasattr(inner, name) for name in ("layers", "norm", "rotary_emb")) and hasattr(
            model, "lm_head"
        )

    def start(self, pasts: list[KVCache | None], cached: int, capacity: int) -> LeanKVBatch:
        # The compute dtype: the embeddings' (int8/nf4 layers compute in it too).
        embedding = cast(nn.Embedding, self.model.get_input_embeddings()).weight
        shape = (len(pasts), self.kv_heads, max(capacity, cached + 1), self.head_dim)
        # Zeros, not empty: a masked key still multiplies its value by a zero weight, and
        # uninitialised memory may hold NaN (0 * NaN = NaN).
        buffers = [(embedding.new_zeros(shape), embedding.new_zeros(shape)) for _ in self.layers]
        for i, past in enumerate(pasts):
            if past is None:
                continue
            for (keys, values), (k, v) in zip(buffers, past, strict=True):
                keys[i, :, cached - k.shape[2] : cached] = k[0]
                values[i, :, cached - v.shape[2] : cached] = v[0]
        return LeanKVBatch(self, buffers, cached, self._projections())

    def _projections(self) -> list[tuple[Projection, ...]]:
        """Each layer's q, k, v, o projections, resolved now so that adapter changes between
        batches (enabled, merged, switched) are honoured."""
        return [
            tuple(
                _projection(getattr(layer.self_attn, name))
                for name in ("q_proj", "k_proj", "v_proj", "o_proj")
            )
            for layer in self.layers
        ]


class LeanKVBatch:
    """Keys and values in ``(rows, kv_heads, capacity, head_dim)`` buffers, filled in place.

    Positions the mask marks as padding hold zeros or the keys of padding inputs (finite); no
    real position attends to them.
    """

    def __init__(
        self,
        decoder: LeanDecoder,
        buffers: list[tuple[Tensor, Tensor]],
        length: int,
        projections: list[tuple[Projection, ...]],
    ):
        self.decoder = decoder
        self.buffers = buffers
        self.length = length
        self.projections = projections

    def forward(self, embeds: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        decoder = self.decoder
        model = decoder.model
        rows, new, _ = embeds.shape
        start, end = self.length, self.length + new
        self._reserve(end)
        cos, sin = model.model.rotary_emb(embeds, positions)
        attn_mask = _attention_mask(mask, start, new)
        hidden = embeds
        for layer, (keys, values), (q_proj, k_proj, v_proj, o_proj) in zip(
            decoder.layers, self.buffers, self.projections, strict=True
        ):
            x = layer.input_layernorm(hidden)
            q = q_proj(x).view(rows, new, decoder.heads, decoder.head_dim)
            k = k_proj(x).view(rows, new, decoder.kv_heads, decoder.head_dim)
            v = v_proj(x).view(rows, new, decoder.kv_heads, decoder.head_dim)
            q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
            keys[:, :, start:end] = k
            values[:, :, start:end] = v.transpose(1, 2)
            out = F.scaled_dot_product_attention(
                q,
                keys[:, :, :end],
                values[:, :, :end],
                attn_mask=attn_mask,
                is_causal=attn_mask is None and new > 1 and start == 0,
                scale=decoder.head_dim**-0.5,
                enable_gqa=decoder.kv_heads != decoder.heads,
            )
            hidden = hidden + o_proj(out.transpose(1, 2).reshape(rows, new, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        self.length = end
        last = model.model.norm(hidden[:, -1])
        return model.lm_head(last).float()

    def select(self, rows: Tensor) -> None:
        self.buffers = [(k[rows], v[rows]) for k, v in self.buffers]

    def row(self, slot: int, positions: Tensor | slice) -> KVCache:
        return tuple(
            (_take(k, slot, positions), _take(v, slot, positions)) for k, v in self.buffers
        )

    def _reserve(self, length: int) -> None:
        """Grow the buffers (doubling) when a forward would overrun them."""
        capacity = self.buffers[0][0].shape[2]
        if length <= capacity:
            return
        grow = max(length, 2 * capacity) - capacity
        self.buffers = [
            (F.pad(k, (0, 0, 0, grow)), F.pad(v, (0, 0, 0, grow))) for k, v in self.buffers
        ]


def _projection(module: nn.Module) -> Projection:
    """How to run one attention projection.

    A PEFT LoRA linear in eval mode with one plain, unmerged adapter over an ``nn.Linear`` runs
    ``W x + b + B(A(x)) * scale``: the operations of PEFT's own forward, in its order and
    dtypes (so the result is identical), without its per-call bookkeeping, which costs more
    than the matrix products of a small model or of one decode step. Anything else (plain or
    quantized layers, DoRA, several or merged adapters) runs as the module itself.
    """
    from peft.tuners.lora import Linear as LoraLinear

    if not isinstance(module, LoraLinear) or module.training or module.merged:
        return module
    active = module.active_adapters
    base = module.get_base_layer()
    if (
        module.disable_adapters
        or len(active) != 1
        or active[0] not in module.lora_A
        or active[0] in module.lora_variant
        or type(base) is not nn.Linear
    ):
        return module
    lora_a, lora_b = module.lora_A[active[0]], module.lora_B[active[0]]
    if not (isinstance(lora_a, nn.Linear) and isinstance(lora_b, nn.Linear)):
        return module
    scale = module.scaling[active[0]]
    weight, bias = base.weight, base.bias

    def lora(x: Tensor) -> Tensor:
        result = F.linear(x, weight, bias)
        low = F.linear(x.to(lora_a.weight.dtype), lora_a.weight, lora_a.bias)
        return (result + F.linear(low, lora_b.weight, lora_b.bias) * scale).to(result.dtype)

    return lora


def _attention_mask(mask: Tensor, start: int, new: int) -> Tensor | None:
    """Boolean ``(rows, 1, new, start + new)`` mask: causal, padding keys hidden. ``None`` when
    nothing is padded (SDPA then runs its causal kernel). Every query also sees its own key, so a
    padding query never has an empty softmax (which would give NaNs that spread through the
    values of later layers)."""
    valid = mask.bool()
    if bool(valid.all()):
        return None if new == 1 or start == 0 else _causal(start, new, mask.device)[None, None]
    if new == 1:
        return valid[:, None, None, :]
    causal = _causal(start, new, mask.device)
    own = torch.zeros_like(causal)
    own[:, start:] = torch.eye(new, dtype=torch.bool, device=mask.device)
    return (causal & valid[:, None, :])[:, None] | own[None, None]


def _causal(start: int, new: int, device: torch.device) -> Tensor:
    """``(new, start + new)``: query ``i`` (at ``start + i``) sees keys ``0 .. start + i``."""
    return torch.ones(new, start + new, dtype=torch.bool, device=device).tril(start)


# --------------------------------------------------------------------------------------------
# Hugging Face forward (any other architecture)
# --------------------------------------------------------------------------------------------


class HFDecoder:
    """The model's own forward with a ``DynamicCache``."""

    def __init__(self, llm: PreTrainedModel | PeftModel) -> None:
        self.llm = llm
        params = inspect.signature(_unwrap(llm).forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"

    def start(self, pasts: list[KVCache | None], cached: int, capacity: int) -> HFKVBatch:
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache()
        template = next((p for p in pasts if p is not None), None)
        if template is not None and cached:
            for layer, (k0, v0) in enumerate(template):
                keys, values = [], []
                for past in pasts:
                    if past is None:
                        keys.append(k0.new_zeros(1, k0.shape[1], cached, k0.shape[3]))
                        values.append(v0.new_zeros(1, v0.shape[1], cached, v0.shape[3]))
                    else:
                        k, v = past[layer]
                        pad = (0, 0, cached - k.shape[2], 0)
                        keys.append(F.pad(k, pad))
                        values.append(F.pad(v, pad))
                cache.update(torch.cat(keys), torch.cat(values), layer)
        return HFKVBatch(self, cache)


class HFKVBatch:
    def __init__(self, decoder: HFDecoder, cache: DynamicCache) -> None:
        self.decoder = decoder
        self.cache = cache

    def forward(self, embeds: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        out = self.decoder.llm(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self.decoder.cache_arg: self.cache},
        )
        return out.logits[:, -1].float()

    def select(self, rows: Tensor) -> None:
        self.cache.batch_select_indices(rows)

    def row(self, slot: int, positions: Tensor | slice) -> KVCache:
        from transformers.cache_utils import DynamicLayer

        layers = []
        for layer in self.cache.layers:
            assert isinstance(layer, DynamicLayer)
            assert layer.keys is not None and layer.values is not None
            layers.append(
                (
                    _take(layer.keys, slot, positions),
                    _take(layer.values, slot, positions),
                )
            )
        return tuple(layers)


def _take(cache: Tensor, slot: int, positions: Tensor | slice) -> Tensor:
    """A copy (never a view that would pin the batch's buffers) of one row's positions."""
    taken = cache[slot : slot + 1, :, positions]
    return taken.clone() if isinstance(positions, slice) else taken
