"""Tiny LLaMA-1-like bases and Vicuna-v0-like deltas on disk, sharded at chosen places.

The files are written by hand (not ``save_pretrained``) so that the layout is exactly the one
chosen: ``.bin`` (torch zip pickles) or safetensors, an index, shards that split the tensors
at different places on each side, and the 2023-era config keys and ``inv_freq`` buffers.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerBase

HIDDEN = 64
INTERMEDIATE = 128
LAYERS = 2
HEADS = 4


def llama1_config(vocab_size: int, **changes: Any) -> dict[str, Any]:
    """A config.json as the 2023 LLaMA-1 conversions wrote it."""
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": 2048,
        "model_type": "llama",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "pad_token_id": 0,
        "rms_norm_eps": 1e-06,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.28.0.dev0",
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    config.update(changes)
    return config


def llama_tensors(
    vocab: int,
    seed: int,
    *,
    dtype: torch.dtype = torch.float16,
    hidden: int = HIDDEN,
    inv_freq: bool = False,
) -> dict[str, torch.Tensor]:
    """Random LLaMA tensors in state-dict order (``inv_freq`` buffers like 2023 checkpoints)."""
    generator = torch.Generator().manual_seed(seed)
    intermediate = 2 * hidden

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(dtype)

    tensors = {"model.embed_tokens.weight": rand(vocab, hidden)}
    for layer in range(LAYERS):
        prefix = f"model.layers.{layer}"
        for proj in ("q", "k", "v", "o"):
            tensors[f"{prefix}.self_attn.{proj}_proj.weight"] = rand(hidden, hidden)
        if inv_freq:
            tensors[f"{prefix}.self_attn.rotary_emb.inv_freq"] = torch.rand(hidden // HEADS // 2)
        tensors[f"{prefix}.mlp.gate_proj.weight"] = rand(intermediate, hidden)
        tensors[f"{prefix}.mlp.down_proj.weight"] = rand(hidden, intermediate)
        tensors[f"{prefix}.mlp.up_proj.weight"] = rand(intermediate, hidden)
        tensors[f"{prefix}.input_layernorm.weight"] = rand(hidden)
        tensors[f"{prefix}.post_attention_layernorm.weight"] = rand(hidden)
    tensors["model.norm.weight"] = rand(hidden)
    tensors["lm_head.weight"] = rand(vocab, hidden)
    return tensors


def write_model(
    folder: Path,
    tensors: dict[str, torch.Tensor],
    config: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase | None,
    *,
    layout: str,
    cuts: Sequence[int] = (),
    order: Sequence[str] | None = None,
) -> Path:
    """Writes ``tensors`` in ``order`` split at the positions ``cuts`` into ``layout``
    (``"bin"`` or ``"safetensors"``) shards, plus an index, the config and the tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(order or tensors)
    bounds = [0, *cuts, len(names)]
    groups = [names[a:b] for a, b in itertools.pairwise(bounds)]
    weight_map = {}
    for number, group in enumerate(groups, start=1):
        if layout == "bin":
            filename = f"pytorch_model-{number:05d}-of-{len(groups):05d}.bin"
            torch.save({name: tensors[name].clone() for name in group}, folder / filename)
        else:
            filename = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
            part = {name: tensors[name].contiguous() for name in group}
            save_file(part, str(folder / filename), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, filename))
    index_name = (
        "pytorch_model.bin.index.json" if layout == "bin" else "model.safetensors.index.json"
    )
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / index_name).write_text(json.dumps(index, indent=2))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder


def make_pair(
    root: Path,
    base_tokenizer: PreTrainedTokenizerBase,
    delta_tokenizer: PreTrainedTokenizerBase | None,
    *,
    base_layout: str = "bin",
    delta_layout: str = "safetensors",
    base_dtype: torch.dtype = torch.float16,
) -> tuple[Path, Path]:
    """A base (vocab = tokenizer) and a v0 delta (vocab + 1), sharded differently."""
    vocab = len(base_tokenizer)
    base = llama_tensors(vocab, seed=1, dtype=base_dtype, inv_freq=base_layout == "bin")
    delta = llama_tensors(vocab + 1, seed=2, inv_freq=delta_layout == "bin")
    delta = {name: value * 0.01 for name, value in delta.items()}
    base_dir = write_model(
        root / "base",
        base,
        llama1_config(vocab),
        base_tokenizer,
        layout=base_layout,
        cuts=(5, 13, 20),
    )
    delta_order = sorted(delta, reverse=True)  # another order, other boundaries
    delta_dir = write_model(
        root / "delta",
        delta,
        llama1_config(vocab + 1, pad_token_id=-1, bos_token_id=0, eos_token_id=1),
        delta_tokenizer,
        layout=delta_layout,
        cuts=(3, 9, 16),
        order=delta_order,
    )
    return base_dir, delta_dir


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
