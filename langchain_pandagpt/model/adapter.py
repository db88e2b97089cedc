"""PandaGPT's released adapter (``pytorch_model.pt``) <-> a standard PEFT LoRA adapter.

The released files are pickled state dicts of the reference training wrapper: LoRA A/B of the
attention projections of every layer (fp16) plus the media projection ``llama_proj``. Keys::

    llama_model.base_model.model.model.layers.{i}.self_attn.{q,k,v,o}_proj.lora_{A,B}.default.weight
    llama_proj.weight   (hidden, 1024)
    llama_proj.bias     (hidden,)

The same LoRA weights as a PEFT adapter directory (``adapter_config.json`` +
``adapter_model.safetensors``) load with ``peft.PeftModel.from_pretrained``; the projection goes
to ``projection.safetensors`` (``weight``, ``bias``). Both forms read into
:class:`AdapterWeights`, which is what the bundle loader applies to the LLM.

The reference layout has no room for ``lora_alpha``: the reference trained with
``alpha == r`` (scaling 1.0), so reading assumes that, and writing folds any other scaling
into ``lora_B`` so the effective weights are unchanged.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from langchain_pandagpt.errors import CheckpointError

TARGET_MODULES: Final[tuple[str, ...]] = ("q_proj", "k_proj", "v_proj", "o_proj")
REFERENCE_LORA_DROPOUT: Final = 0.1
ADAPTER_CONFIG_NAME: Final = "adapter_config.json"
ADAPTER_WEIGHTS_NAME: Final = "adapter_model.safetensors"
PROJECTION_NAME: Final = "projection.safetensors"
REFERENCE_PROJECTION_KEYS: Final = ("llama_proj.weight", "llama_proj.bias")

_REFERENCE_LORA_KEY = re.compile(
    r"llama_model\.(base_model\.model\.model\.layers\.\d+\.self_attn\.[qkvo]_proj\.lora_[AB])"
    r"\.default\.weight"
)
_PEFT_LORA_KEY = re.compile(
    r"base_model\.model\.model\.layers\.(\d+)\.self_attn\.([qkvo]_proj)\.lora_([AB])\.weight"
)
_PEFT_KEY_PREFIX: Final = "base_model.model."
_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


@dataclass
class AdapterWeights:
    """A LoRA adapter (PEFT key names, without the adapter name) plus the media projection.

    ``projection_weight`` is (hidden, ImageBind width) and ``projection_bias`` is (hidden,).
    """

    config: LoraConfig
    lora: dict[str, torch.Tensor]
    projection_weight: torch.Tensor
    projection_bias: torch.Tensor

    @property
    def layer_indices(self) -> list[int]:
        """Sorted indices of the decoder layers the adapter has weights for."""
        found = {int(m.group(1)) for key in self.lora if (m := _LAYER_INDEX.search(key))}
        return sorted(found)


def reference_lora_config(rank: int = 32) -> LoraConfig:
    """The reference LoRA setup: q/k/v/o of every layer, dropout 0.1, scaling ``alpha / r = 1``."""
    return LoraConfig(
        r=rank,
        lora_alpha=rank,
        lora_dropout=REFERENCE_LORA_DROPOUT,
        target_modules=list(TARGET_MODULES),
        bias="none",
        task_type="CAUSAL_LM",
    )


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _load_pickle(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: adapter file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad or unsafe pickles
        raise CheckpointError(f"{path}: cannot be loaded as a weights-only pickle ({exc})") from exc
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def _lora_rank(lora: Mapping[str, torch.Tensor], source: Path) -> int:
    ranks = {t.shape[0] for key, t in lora.items() if ".lora_A." in key}
    if len(ranks) != 1:
        raise CheckpointError(f"{source}: LoRA A matrices have mixed or no ranks {sorted(ranks)}")
    return ranks.pop()


def read_reference_checkpoint(path: str | os.PathLike[str]) -> AdapterWeights:
    """Reads a released PandaGPT ``pytorch_model.pt`` (LoRA rank taken from the shapes)."""
    source = Path(path)
    state = _load_pickle(source)
    lora: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        match = _REFERENCE_LORA_KEY.fullmatch(key)
        if match:
            lora[f"{match.group(1)}.weight"] = value.detach()
        elif key not in REFERENCE_PROJECTION_KEYS:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{source}: {len(unknown)} keys are not PandaGPT adapter weights (first: "
            f"{unknown[0]}); expected llama_model...lora_A/B.default.weight and llama_proj.*"
        )
    missing = [key for key in REFERENCE_PROJECTION_KEYS if key not in state]
    if missing or not lora:
        what = ", ".join(missing) if missing else "LoRA weights"
        raise CheckpointError(f"{source}: not a complete PandaGPT adapter (missing {what})")
    return AdapterWeights(
        config=reference_lora_config(_lora_rank(lora, source)),
        lora=lora,
        projection_weight=state["llama_proj.weight"].detach(),
        projection_bias=state["llama_proj.bias"].detach(),
    )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several error types for bad files
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


def read_projection(path: str | os.PathLike[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Reads ``(weight, bias)`` from a ``projection.safetensors`` file."""
    source = Path(path)
    if not source.is_file():
        raise CheckpointError(f"{source}: projection file not found")
    tensors = _load_safetensors(source)
    if set(tensors) != {"weight", "bias"}:
        raise CheckpointError(
            f"{source}: expected exactly the tensors 'weight' and 'bias', found {sorted(tensors)}"
        )
    return tensors["weight"], tensors["bias"]


def read_peft_adapter(
    adapter_dir: str | os.PathLike[str], projection: str | os.PathLike[str] | None = None
) -> AdapterWeights:
    """Reads a PEFT LoRA adapter directory and its projection.

    ``projection`` defaults to ``<adapter_dir>/projection.safetensors``.
    """
    folder = Path(adapter_dir)
    config_path = folder / ADAPTER_CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: PEFT adapter config not found")
    try:
        config = PeftConfig.from_pretrained(str(folder))
    except Exception as exc:  # peft raises ValueError/TypeError/JSON errors for bad configs
        raise CheckpointError(f"{config_path}: not a valid PEFT adapter config ({exc})") from exc
    if not isinstance(config, LoraConfig):
        raise CheckpointError(f"{config_path}: a LoRA adapter is needed, found {config.peft_type}")
    weights_path = folder / ADAPTER_WEIGHTS_NAME
    legacy_path = folder / "adapter_model.bin"  # written by older PEFT versions
    if weights_path.is_file():
        lora = _load_safetensors(weights_path)
    elif legacy_path.is_file():
        lora = {key: value.detach() for key, value in _load_pickle(legacy_path).items()}
    else:
        raise CheckpointError(f"{weights_path}: PEFT adapter weights not found")
    if not lora:
        raise CheckpointError(f"{weights_path}: the adapter has no weights")
    weight, bias = read_projection(projection or folder / PROJECTION_NAME)
    return AdapterWeights(config=config, lora=lora, projection_weight=weight, projection_bias=bias)


# --------------------------------------------------------------------------------------------
# Writing and converting
# --------------------------------------------------------------------------------------------


def _config_json(config: LoraConfig) -> str:
    """``adapter_config.json`` text with sets sorted, so equal configs give identical files."""
    values = config.to_dict()
    for key, value in values.items():
        if isinstance(value, set):
            values[key] = sorted(value)
    return json.dumps(values, indent=2, sort_keys=True) + "\n"


def write_projection(
    weight: torch.Tensor, bias: torch.Tensor, path: str | os.PathLike[str]
) -> Path:
    """Writes the media projection as ``projection.safetensors`` (``weight``, ``bias``)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "weight": weight.detach().cpu().contiguous(),
        "bias": bias.detach().cpu().contiguous(),
    }
    save_file(tensors, str(out))
    return out


def write_peft_adapter(
    weights: AdapterWeights,
    out_dir: str | os.PathLike[str],
    projection: str | os.PathLike[str] | None = None,
) -> Path:
    """Writes a PEFT adapter directory (+ projection, default ``<dir>/projection.safetensors``)."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ADAPTER_CONFIG_NAME).write_text(_config_json(weights.config))
    lora = {key: weights.lora[key].detach().cpu().contiguous() for key in sorted(weights.lora)}
    save_file(lora, str(folder / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
    write_projection(
        weights.projection_weight, weights.projection_bias, projection or folder / PROJECTION_NAME
    )
    return folder


def _reference_scale(config: LoraConfig, source: str) -> float:
    """The factor to fold into ``lora_B`` so the reference's scaling 1.0 gives the same weights."""
    unsupported = [
        name
        for name, active in (
            ("bias", config.bias != "none"),
            ("modules_to_save", bool(config.modules_to_save)),
            ("use_dora", config.use_dora),
            ("rank_pattern", bool(config.rank_pattern)),
            ("alpha_pattern", bool(config.alpha_pattern)),
        )
        if active
    ]
    if unsupported:
        raise CheckpointError(
            f"{source}: the reference layout cannot express {', '.join(unsupported)}; "
            "keep the adapter in PEFT form"
        )
    denominator = config.r**0.5 if config.use_rslora else config.r
    return float(config.lora_alpha) / float(denominator)


def _reference_sort_key(key: str) -> tuple[int, int, str]:
    match = _PEFT_LORA_KEY.fullmatch(key)
    assert match is not None
    return int(match.group(1)), TARGET_MODULES.index(match.group(2)), match.group(3)


def write_reference_checkpoint(
    weights: AdapterWeights, path: str | os.PathLike[str], *, source: str = "adapter"
) -> Path:
    """Writes ``weights`` in the released ``pytorch_model.pt`` layout (fp16 ``nn.Parameter``s)."""
    out = Path(path)
    scale = _reference_scale(weights.config, source)
    outside = [key for key in weights.lora if not _PEFT_LORA_KEY.fullmatch(key)]
    if outside:
        raise CheckpointError(
            f"{source}: the reference layout only has LoRA on self_attn.q/k/v/o_proj, but the "
            f"adapter also adapts {outside[0]}"
        )
    state: OrderedDict[str, nn.Parameter] = OrderedDict()
    for key in sorted(weights.lora, key=_reference_sort_key):
        tensor = weights.lora[key].detach().float()
        if ".lora_B." in key:
            tensor = tensor * scale
        name = f"llama_model.{key.removesuffix('.weight')}.default.weight"
        state[name] = nn.Parameter(tensor.half().contiguous(), requires_grad=False)
    for name, tensor in zip(
        REFERENCE_PROJECTION_KEYS, (weights.projection_weight, weights.projection_bias), strict=True
    ):
        state[name] = nn.Parameter(tensor.detach().half().contiguous(), requires_grad=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    return out


def convert_reference_checkpoint(
    pt_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]
) -> Path:
    """``pytorch_model.pt`` -> PEFT adapter directory with ``projection.safetensors`` inside."""
    return write_peft_adapter(read_reference_checkpoint(pt_path), out_dir)


def export_reference_checkpoint(
    adapter_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    projection: str | os.PathLike[str] | None = None,
) -> Path:
    """PEFT adapter directory (+ projection) -> the released ``pytorch_model.pt`` layout."""
    weights = read_peft_adapter(adapter_dir, projection)
    return write_reference_checkpoint(weights, out_path, source=str(adapter_dir))


# --------------------------------------------------------------------------------------------
# Checking and applying
# --------------------------------------------------------------------------------------------


def check_adapter_fits(weights: AdapterWeights, llm_config: PretrainedConfig, source: str) -> None:
    """Raises :class:`CheckpointError` unless every adapter tensor fits the LLM of ``llm_config``.

    The LLM is built on the meta device (no memory, no weights read), so an adapter made for
    another model fails in a second with the reason, before anything large is loaded.
    """
    hidden = llm_config.hidden_size
    layers = llm_config.num_hidden_layers
    projection_out = weights.projection_weight.shape[0]
    if projection_out != hidden or tuple(weights.projection_bias.shape) != (hidden,):
        raise CheckpointError(
            f"{source}: the projection outputs {projection_out} features but the LLM's hidden "
            f"size is {hidden}; the adapter was made for another LLM"
        )
    found = weights.layer_indices
    if weights.config.layers_to_transform is None and found and found != list(range(layers)):
        raise CheckpointError(
            f"{source}: the adapter has LoRA weights for {len(found)} decoder layers "
            f"({found[0]}..{found[-1]}) but the LLM has {layers}; it was made for another LLM"
        )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(llm_config)
    for key, tensor in weights.lora.items():
        module_path, _, kind = key.removeprefix(_PEFT_KEY_PREFIX).rpartition(".lora_")
        try:
            module = model.get_submodule(module_path)
        except AttributeError:
            module = None
        if not isinstance(module, nn.Linear):
            raise CheckpointError(
                f"{source}: adapter weight {key} targets {module_path}, which is not a linear "
                "layer of this LLM"
            )
        shape = tuple(tensor.shape)
        if kind.startswith("A"):
            expected = (shape[0], module.in_features)
        else:
            expected = (module.out_features, shape[-1])
        if shape != expected:
            raise CheckpointError(
                f"{source}: adapter weight {key} has shape {shape} but the LLM needs {expected} "
                f"(LLM hidden size {hidden}); the adapter was made for another LLM"
            )


def apply_adapter(
    llm: PreTrainedModel, weights: AdapterWeights, *, merge: bool = False
) -> PeftModel | PreTrainedModel:
    """Wraps ``llm`` with the LoRA of ``weights`` (eval mode).

    LoRA stays unmerged and in the LLM's dtype by default, which is the reference numerics
    (fp16 ``W x + B(A x)``); ``merge=True`` folds it into the weights for speed (not for
    quantized LLMs).
    """
    config = copy.copy(weights.config)
    config.inference_mode = True
    model = get_peft_model(llm, config, autocast_adapter_dtype=False)
    result: Any = set_peft_model_state_dict(model, weights.lora)  # peft annotates "namedtuple"
    missing = [key for key in result.missing_keys if ".lora_" in key]
    if missing or result.unexpected_keys:
        problem = f"missing {missing[0]}" if missing else f"unexpected {result.unexpected_keys[0]}"
        raise CheckpointError(f"the adapter does not match the LLM's LoRA layers ({problem})")
    model.eval()
    if merge:
        return cast(PreTrainedModel, model.merge_and_unload())
    return model
