"""Loading a bundle: devices, precisions, and every part checked before the weights are read.

The manifest itself (``pandagpt.json``) is :mod:`langchain_pandagpt.model.manifest`; one shared
copy per process is :func:`langchain_pandagpt.generation.registry.get_shared_model`.
transformers' model classes, peft and bitsandbytes are imported by :func:`load_pandagpt`, not
with this module, so that ``import langchain_pandagpt`` and the CLI's argument checks stay fast.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, cast, get_args

import torch
from safetensors import SafetensorError
from torch import nn

from langchain_pandagpt.errors import CheckpointError, DownloadNotAllowedError
from langchain_pandagpt.imagebind.checkpoint import load_imagebind, resolve_imagebind_checkpoint
from langchain_pandagpt.imagebind.model import ImageBindConfig
from langchain_pandagpt.model.lazy_state import lazy_state_dict
from langchain_pandagpt.model.manifest import (
    MANIFEST_NAME,
    OFFICIAL_IMAGEBIND,
    AdapterSpec,
    BundleManifest,
    manifest_path,
)
from langchain_pandagpt.model.modeling import PandaGPTModel
from langchain_pandagpt.model.quiet import quiet_loading

if TYPE_CHECKING:
    from transformers import (
        BitsAndBytesConfig,
        PretrainedConfig,
        PreTrainedModel,
        PreTrainedTokenizerBase,
    )

    from langchain_pandagpt.model.adapter import AdapterWeights

logger = logging.getLogger(__name__)

#: Concrete precisions: fp32/fp16/bf16 for the whole model, int8/nf4 quantize the LLM.
Precision = Literal["fp32", "fp16", "bf16", "int8", "nf4"]
#: What users may ask for: a precision, or ``"auto"`` (fp16 on CUDA, fp32 on CPU).
PrecisionChoice = Literal["auto", "fp32", "fp16", "bf16", "int8", "nf4"]
PRECISIONS: Final[tuple[str, ...]] = get_args(Precision)
PRECISION_CHOICES: Final[tuple[str, ...]] = get_args(PrecisionChoice)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------
# Devices and precisions
# --------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` -> a concrete, available device."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        target = None
    if target is None or target.type not in ("cpu", "cuda"):
        raise CheckpointError(f"device {device!r} is not supported; use cpu, cuda, cuda:N or auto")
    if target.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise CheckpointError(
            f"device {device!r} was requested but CUDA is not available in this PyTorch "
            f"({torch.__version__}); use device='cpu' or 'auto'"
        )
    index = torch.cuda.current_device() if target.index is None else target.index
    if index >= torch.cuda.device_count():
        raise CheckpointError(
            f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible"
        )
    return torch.device("cuda", index)


@dataclass(frozen=True)
class _PrecisionPlan:
    llm_dtype: torch.dtype  # compute dtype of the LLM (and of media tokens)
    imagebind_dtype: torch.dtype
    quantization: BitsAndBytesConfig | None


def imagebind_dtype(precision: str, device: torch.device) -> torch.dtype:
    """ImageBind's dtype in a model of ``precision`` on ``device``: the model's own for
    fp32/fp16/bf16; with int8/nf4 (LLM only) fp16 on CUDA and fp32 on CPU."""
    precision = resolve_precision(precision, device)
    if precision in _FLOAT_DTYPES:
        return _FLOAT_DTYPES[precision]
    return torch.float16 if device.type == "cuda" else torch.float32


_FLOAT_DTYPES: Final[dict[str, torch.dtype]] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


def _precision_plan(precision: str, device: torch.device) -> _PrecisionPlan:
    """int8/nf4 quantize the LLM only; ImageBind then runs in fp16 on CUDA, fp32 on CPU."""
    if precision in _FLOAT_DTYPES:
        dtype = _FLOAT_DTYPES[precision]
        return _PrecisionPlan(dtype, dtype, None)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise CheckpointError(
            f"precision {precision!r} needs bitsandbytes: "
            "pip install 'langchain-pandagpt[quantization]'"
        ) from exc
    from transformers import BitsAndBytesConfig

    compute = torch.float16 if device.type == "cuda" else torch.float32
    if precision == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute
        )
    return _PrecisionPlan(compute, compute, config)


def check_precision(precision: str) -> None:
    """Refuses anything but ``auto`` and the concrete precisions, naming the choices."""
    if precision not in PRECISION_CHOICES:
        raise CheckpointError(
            f"precision {precision!r} is not supported; use one of {', '.join(PRECISION_CHOICES)}"
        )


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """The one precision rule of the library (class, CLI, server, embeddings): ``auto`` is
    fp16 on CUDA and fp32 on CPU (PyTorch has no fast CPU fp16 matrix multiply)."""
    check_precision(precision)
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    return cast(Precision, precision)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _llm_source(manifest: BundleManifest, root: Path) -> tuple[str, bool]:
    """The LLM as ``(path or hub id, is_local)``."""
    local = root / Path(manifest.llm).expanduser()
    if local.is_dir():
        return str(local), True
    if _HUB_ID.fullmatch(manifest.llm):
        return manifest.llm, False
    raise CheckpointError(
        f"{local}: LLM directory not found (named by 'llm' in {root / MANIFEST_NAME})"
    )


def _from_pretrained(
    load: Callable[..., _T], source: str, is_local: bool, allow_download: bool, **kwargs: Any
) -> _T:
    try:
        return load(source, local_files_only=is_local or not allow_download, **kwargs)
    except OSError as exc:
        if not is_local and not allow_download:
            raise DownloadNotAllowedError(
                f"{source} is not in the Hugging Face cache and downloads are off; pass "
                "allow_download=True or point 'llm' in pandagpt.json at a local directory"
            ) from exc
        raise CheckpointError(f"{source}: cannot load the LLM ({exc})") from exc


def _load_llm(
    source: str,
    is_local: bool,
    allow_download: bool,
    config: PretrainedConfig,
    plan: _PrecisionPlan,
    target: torch.device,
) -> PreTrainedModel:
    """The base LLM in ``plan``'s dtype/quantization on ``target``.

    A local safetensors checkpoint is handed to transformers tensor by tensor
    (:mod:`~langchain_pandagpt.model.lazy_state`), so converting or quantizing it never holds
    the file and the converted weights at once; anything else goes through ``from_pretrained``.
    """
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoModelForCausalLM, PreTrainedModel

    options: dict[str, Any] = {
        "dtype": plan.llm_dtype,
        "device_map": {"": str(target)},
        "quantization_config": plan.quantization,
    }
    state = lazy_state_dict(Path(source)) if is_local else None
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if state is None or not isinstance(model_class, type):
        return _from_pretrained(
            AutoModelForCausalLM.from_pretrained, source, is_local, allow_download, **options
        )
    try:
        return cast(
            PreTrainedModel,
            model_class.from_pretrained(None, config=config, state_dict=state, **options),
        )
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{source}: cannot load the LLM ({exc})") from exc


def _imagebind_path(manifest: BundleManifest, root: Path, allow_download: bool) -> Path:
    if manifest.imagebind == OFFICIAL_IMAGEBIND:
        return resolve_imagebind_checkpoint(None, allow_download=allow_download)
    return resolve_imagebind_checkpoint(root / Path(manifest.imagebind).expanduser())


def imagebind_checkpoint(bundle: str | os.PathLike[str], *, allow_download: bool = False) -> Path:
    """The ImageBind checkpoint file a bundle uses (for ``ImageBindEmbeddings(checkpoint=...)``,
    so media search and chat share one encoder file)."""
    manifest_file = manifest_path(bundle)
    return _imagebind_path(BundleManifest.read(manifest_file), manifest_file.parent, allow_download)


def _read_adapter(spec: AdapterSpec, root: Path) -> tuple[AdapterWeights, str]:
    from langchain_pandagpt.model.adapter import read_peft_adapter, read_reference_checkpoint

    path = root / spec.path
    if spec.format == "reference":
        return read_reference_checkpoint(path), str(path)
    projection = root / spec.projection if spec.projection is not None else None
    return read_peft_adapter(path, projection), str(path)


def _check_vocab(
    manifest: BundleManifest,
    llm_config: PretrainedConfig,
    tokenizer: PreTrainedTokenizerBase,
    llm_source: str,
    manifest_file: Path,
) -> None:
    llm_vocab = llm_config.vocab_size
    expected = manifest.adapter.vocab_size
    if expected is not None and expected != llm_vocab:
        raise CheckpointError(
            f"{manifest_file}: the adapter was trained with an LLM of vocabulary {expected}, but "
            f"{llm_source} has {llm_vocab}; this is another base model (the released PandaGPT "
            "adapters need Vicuna v0, vocabulary 32001)"
        )
    if len(tokenizer) > llm_vocab:
        raise CheckpointError(
            f"{llm_source}: the tokenizer has {len(tokenizer)} tokens but the LLM's embedding has "
            f"only {llm_vocab} rows; the tokenizer and weights come from different models"
        )


def load_pandagpt(
    bundle: str | os.PathLike[str],
    *,
    precision: PrecisionChoice = "auto",
    device: str | torch.device = "auto",
    allow_download: bool = False,
    merge_lora: bool = False,
) -> PandaGPTModel:
    """Loads a bundle into a ready, eval-mode :class:`PandaGPTModel`.

    ``precision``: fp32/fp16/bf16 for the whole model, int8/nf4 (bitsandbytes) for the LLM
    only, or auto (fp16 on CUDA, fp32 on CPU). ``device``: cpu, cuda, cuda:N or auto.
    ``allow_download``: fetch a hub LLM or the official ImageBind when they are not cached.
    ``merge_lora``: fold LoRA into the weights (faster; close to, but not bit-identical with,
    the reference numerics).

    Every part is found and checked against the others before the LLM weights are read, so a
    wrong combination fails fast with a :class:`CheckpointError` that names the file. Known
    third-party chatter during the load (see :mod:`langchain_pandagpt.model.quiet`) is
    silenced; our own warnings and other libraries' are not.
    """
    with quiet_loading():
        return _load(bundle, precision, device, allow_download, merge_lora)


def _load(
    bundle: str | os.PathLike[str],
    precision: PrecisionChoice,
    device: str | torch.device,
    allow_download: bool,
    merge_lora: bool,
) -> PandaGPTModel:
    from transformers import AutoConfig, AutoTokenizer

    from langchain_pandagpt.model.adapter import apply_adapter, check_adapter_fits

    manifest_file = manifest_path(bundle)
    manifest = BundleManifest.read(manifest_file)
    root = manifest_file.parent
    target = resolve_device(device)
    precision = resolve_precision(precision, target)
    plan = _precision_plan(precision, target)
    if precision == "fp16" and target.type == "cpu":
        logger.warning(
            "%s: fp16 on CPU works but is slow: PyTorch has no fast CPU fp16 matrix multiply "
            "(batched decoding gains little); use bf16 for half precision on CPU, fp16 on GPU",
            bundle,
        )
    if merge_lora and plan.quantization is not None:
        raise CheckpointError(
            f"merge_lora is not available for {precision}; use fp32, fp16 or bf16"
        )

    llm_source, llm_local = _llm_source(manifest, root)
    imagebind_path = _imagebind_path(manifest, root, allow_download)
    adapter, adapter_source = _read_adapter(manifest.adapter, root)

    llm_config = _from_pretrained(AutoConfig.from_pretrained, llm_source, llm_local, allow_download)
    check_adapter_fits(adapter, llm_config, adapter_source)
    tokenizer = _from_pretrained(
        AutoTokenizer.from_pretrained, llm_source, llm_local, allow_download
    )
    _check_vocab(manifest, llm_config, tokenizer, llm_source, manifest_file)

    imagebind_config = (
        ImageBindConfig.from_dict(manifest.imagebind_config) if manifest.imagebind_config else None
    )
    imagebind = load_imagebind(
        imagebind_path,
        config=imagebind_config,
        modalities=manifest.imagebind_towers,
        device=target,
        dtype=plan.imagebind_dtype,
    )
    width = imagebind.config.out_embed_dim
    if adapter.projection_weight.shape[1] != width:
        raise CheckpointError(
            f"{adapter_source}: the projection takes {adapter.projection_weight.shape[1]} "
            f"features but {imagebind_path} embeds into {width}; the adapter was made for "
            "another ImageBind"
        )

    base_llm = _load_llm(llm_source, llm_local, allow_download, llm_config, plan, target)
    llm = apply_adapter(base_llm, adapter, merge=merge_lora)
    projection = nn.Linear(width, llm_config.hidden_size, device=target, dtype=plan.llm_dtype)
    with torch.no_grad():
        projection.weight.copy_(adapter.projection_weight)
        projection.bias.copy_(adapter.projection_bias)
    projection.eval().requires_grad_(False)
    return PandaGPTModel(
        manifest=manifest,
        tokenizer=tokenizer,
        llm=llm,
        imagebind=imagebind,
        projection=projection,
        imagebind_path=imagebind_path,
    )
