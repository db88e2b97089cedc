"""A PandaGPT bundle: the ``pandagpt.json`` manifest, loading it, and process-wide shared copies.

A bundle is a directory whose manifest names the three parts (LLM, ImageBind, adapter) and the
settings that make outputs match the reference (BOS id, per-modality embedding scales, prompt
fidelity). Parts may live inside the bundle (relative paths), elsewhere (absolute paths), on
the Hugging Face hub (LLM id) or in the user cache (``"official"`` ImageBind), so one 4.5 GB
ImageBind file can serve many bundles.

Example ``pandagpt.json`` for the released 7B model::

    {
      "format_version": 1,
      "name": "pandagpt-7b",
      "llm": "/models/vicuna-7b-v0",
      "imagebind": "official",
      "adapter": {"format": "reference", "path": "pytorch_model.pt", "vocab_size": 32001},
      "bos_token_id": null,
      "embedding_scales": {"audio": false, "thermal": true, "depth": true, "imu": true},
      "fidelity": "default",
      "media_fusion": "sum",
      "max_context": 2048
    }
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, get_args

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from langchain_pandagpt.errors import CheckpointError, DownloadNotAllowedError
from langchain_pandagpt.imagebind.checkpoint import load_imagebind, resolve_imagebind_checkpoint
from langchain_pandagpt.imagebind.model import MODALITIES, ImageBindConfig
from langchain_pandagpt.model.adapter import (
    AdapterWeights,
    apply_adapter,
    check_adapter_fits,
    read_peft_adapter,
    read_reference_checkpoint,
)
from langchain_pandagpt.model.modeling import PandaGPTModel

logger = logging.getLogger(__name__)

MANIFEST_NAME: Final = "pandagpt.json"
FORMAT_VERSION: Final = 1
#: ``imagebind`` value meaning the official ``imagebind_huge.pth`` from the user cache.
OFFICIAL_IMAGEBIND: Final = "official"

Precision = Literal["fp32", "fp16", "bf16", "int8", "nf4"]
Fidelity = Literal["default", "reference"]
MediaFusion = Literal["sum", "sequence"]
AdapterFormat = Literal["reference", "peft"]
PRECISIONS: Final[tuple[str, ...]] = get_args(Precision)

#: The reference PandaGPT's embedding scales: audio is L2-normalised only (its x20 is skipped),
#: thermal keeps its x10; depth and IMU had no path there and keep ImageBind's own x5.
#: Vision has no logit scale at all.
REFERENCE_EMBEDDING_SCALES: Final[Mapping[str, bool]] = {
    "audio": False,
    "thermal": True,
    "depth": True,
    "imu": True,
}

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_T = TypeVar("_T")


def _check(value: object, expected: type | tuple[type, ...], what: str) -> None:
    # JSON true/false are Python bools, which are also ints: refuse them where ints are meant.
    if not isinstance(value, expected) or (isinstance(value, bool) and expected is int):
        raise ValueError(f"{what} has the wrong type {type(value).__name__}")


def _check_choice(value: object, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"{what} is {value!r}; use one of {', '.join(choices)}")


@dataclass
class AdapterSpec:
    """Where the LoRA adapter and media projection are.

    ``format="reference"``: ``path`` is a released ``pytorch_model.pt`` (LoRA + ``llama_proj``).
    ``format="peft"``: ``path`` is a PEFT adapter directory and ``projection`` a
    ``projection.safetensors`` (default: inside the adapter directory).
    ``vocab_size`` is the vocabulary of the LLM the adapter was trained with (Vicuna v0: 32001);
    when given, an LLM with another vocabulary (say LLaMA-1's 32000) is refused.
    """

    format: AdapterFormat = "reference"
    path: str = "pytorch_model.pt"
    projection: str | None = None
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        _check_choice(self.format, get_args(AdapterFormat), "adapter.format")
        _check(self.path, str, "adapter.path")
        if self.projection is not None:
            _check(self.projection, str, "adapter.projection")
            if self.format == "reference":
                raise ValueError("adapter.projection is only used with format 'peft'")
        if self.vocab_size is not None:
            _check(self.vocab_size, int, "adapter.vocab_size")


@dataclass
class BundleManifest:
    """The contents of ``pandagpt.json``; paths are relative to the bundle directory.

    ``llm``: a directory (relative or absolute) or a Hugging Face hub id.
    ``imagebind``: a ``.safetensors``/``.pth`` file, or ``"official"`` (user cache).
    ``imagebind_config``: :class:`ImageBindConfig` fields; default: the one stored in a
    converted file, else ``imagebind_huge``. ``imagebind_towers``: towers to build.
    ``bos_token_id``: the id put before the prompt; ``None`` uses the tokenizer's (the 13B
    release probably used 2, see the reference notes). ``embedding_scales``: per media kind,
    whether ImageBind's logit scale is applied (:data:`REFERENCE_EMBEDDING_SCALES` by default).
    ``fidelity``/``media_fusion``: default prompt settings (``prompt.py``). ``max_context``:
    the LLM's trained context length.
    """

    name: str
    llm: str = "llm"
    imagebind: str = "imagebind.safetensors"
    adapter: AdapterSpec = field(default_factory=AdapterSpec)
    imagebind_config: dict[str, Any] | None = None
    imagebind_towers: tuple[str, ...] = MODALITIES
    bos_token_id: int | None = None
    embedding_scales: dict[str, bool] = field(
        default_factory=lambda: dict(REFERENCE_EMBEDDING_SCALES)
    )
    fidelity: Fidelity = "default"
    media_fusion: MediaFusion = "sum"
    max_context: int = 2048
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        _check(self.format_version, int, "format_version")
        if self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version} is newer than this library understands "
                f"({FORMAT_VERSION}); upgrade langchain-pandagpt"
            )
        for name in ("name", "llm", "imagebind"):
            value = getattr(self, name)
            _check(value, str, name)
            if not value:
                raise ValueError(f"{name} must not be empty")
        if isinstance(self.adapter, Mapping):
            self.adapter = _from_mapping(AdapterSpec, self.adapter, "adapter")
        _check(self.adapter, AdapterSpec, "adapter")
        if self.imagebind_config is not None:
            _check(self.imagebind_config, dict, "imagebind_config")
            ImageBindConfig.from_dict(self.imagebind_config)
        _check(self.imagebind_towers, (list, tuple), "imagebind_towers")
        self.imagebind_towers = tuple(self.imagebind_towers)
        unknown = sorted(set(self.imagebind_towers) - set(MODALITIES))
        if unknown or not self.imagebind_towers:
            raise ValueError(
                f"imagebind_towers must name some of {', '.join(MODALITIES)}; "
                f"got {list(self.imagebind_towers)}"
            )
        if self.bos_token_id is not None:
            _check(self.bos_token_id, int, "bos_token_id")
        _check(self.embedding_scales, dict, "embedding_scales")
        unknown = sorted(set(self.embedding_scales) - set(REFERENCE_EMBEDDING_SCALES))
        if unknown:
            raise ValueError(
                f"embedding_scales has unknown keys {unknown}; it takes "
                f"{', '.join(REFERENCE_EMBEDDING_SCALES)} (vision has no scale)"
            )
        for key, value in self.embedding_scales.items():
            _check(value, bool, f"embedding_scales.{key}")
        self.embedding_scales = {**REFERENCE_EMBEDDING_SCALES, **self.embedding_scales}
        _check_choice(self.fidelity, get_args(Fidelity), "fidelity")
        _check_choice(self.media_fusion, get_args(MediaFusion), "media_fusion")
        _check(self.max_context, int, "max_context")
        if self.max_context <= 0:
            raise ValueError("max_context must be positive")

    def applies_logit_scale(self, tower: str) -> bool:
        """Whether ImageBind's logit scale is applied to embeddings of ``tower``."""
        return self.embedding_scales.get(tower, True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``format_version`` first)."""
        values = asdict(self)
        values["imagebind_towers"] = list(self.imagebind_towers)
        return {"format_version": values.pop("format_version"), **values}

    def write(self, bundle_dir: str | os.PathLike[str]) -> Path:
        """Writes ``pandagpt.json`` into ``bundle_dir``."""
        path = Path(bundle_dir) / MANIFEST_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, bundle: str | os.PathLike[str]) -> BundleManifest:
        """Reads the manifest of a bundle directory (or a ``pandagpt.json`` path)."""
        path = manifest_path(bundle)
        if not path.is_file():
            raise CheckpointError(
                f"{path}: bundle manifest not found; create a bundle with "
                "`pandagpt create-tiny-checkpoint` or write pandagpt.json (see bundle.py)"
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: not a readable JSON manifest ({exc})") from exc
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: the manifest must be a JSON object")
        try:
            return _from_mapping(cls, data, "manifest")
        except ValueError as exc:
            raise CheckpointError(f"{path}: invalid manifest: {exc}") from exc


def _from_mapping(cls: Callable[..., _T], data: Mapping[str, Any], what: str) -> _T:
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{what} has unknown keys {unknown}")
    try:
        return cls(**data)
    except TypeError as exc:  # missing required keys
        raise ValueError(f"{what}: {exc}") from exc


def manifest_path(bundle: str | os.PathLike[str]) -> Path:
    """``<bundle>/pandagpt.json``, or ``bundle`` itself when it names a ``.json`` file."""
    path = Path(bundle).expanduser()
    return path if path.suffix == ".json" else path / MANIFEST_NAME


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


def _precision_plan(precision: str, device: torch.device) -> _PrecisionPlan:
    """int8/nf4 quantize the LLM only; ImageBind then runs in fp16 on CUDA, fp32 on CPU."""
    _check_precision(precision)
    if precision in ("fp32", "fp16", "bf16"):
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        return _PrecisionPlan(dtype, dtype, None)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise CheckpointError(
            f"precision {precision!r} needs bitsandbytes: "
            "pip install 'langchain-pandagpt[quantization]'"
        ) from exc
    compute = torch.float16 if device.type == "cuda" else torch.float32
    if precision == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute
        )
    return _PrecisionPlan(compute, compute, config)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise CheckpointError(
            f"precision {precision!r} is not supported; use one of {', '.join(PRECISIONS)}"
        )


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
    precision: Precision = "fp32",
    device: str | torch.device = "cpu",
    allow_download: bool = False,
    merge_lora: bool = False,
) -> PandaGPTModel:
    """Loads a bundle into a ready, eval-mode :class:`PandaGPTModel`.

    ``precision``: fp32/fp16/bf16 for the whole model, or int8/nf4 (bitsandbytes) for the LLM
    only. ``device``: cpu, cuda, cuda:N or auto. ``allow_download``: fetch a hub LLM or the
    official ImageBind when they are not cached. ``merge_lora``: fold LoRA into the weights
    (faster; close to, but not bit-identical with, the reference numerics).

    Every part is found and checked against the others before the LLM weights are read, so a
    wrong combination fails fast with a :class:`CheckpointError` that names the file.
    """
    manifest_file = manifest_path(bundle)
    manifest = BundleManifest.read(manifest_file)
    root = manifest_file.parent
    target = resolve_device(device)
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

    base_llm = _from_pretrained(
        AutoModelForCausalLM.from_pretrained,
        llm_source,
        llm_local,
        allow_download,
        dtype=plan.llm_dtype,
        device_map={"": str(target)},
        quantization_config=plan.quantization,
    )
    llm = apply_adapter(base_llm, adapter, merge=merge_lora)
    projection = nn.Linear(width, llm_config.hidden_size, device=target, dtype=plan.llm_dtype)
    with torch.no_grad():
        projection.weight.copy_(adapter.projection_weight)
        projection.bias.copy_(adapter.projection_bias)
    projection.eval().requires_grad_(False)
    return PandaGPTModel(
        manifest=manifest, tokenizer=tokenizer, llm=llm, imagebind=imagebind, projection=projection
    )


# --------------------------------------------------------------------------------------------
# Shared instances
# --------------------------------------------------------------------------------------------

_SharedKey = tuple[str, str, str, bool]
_shared_models: dict[_SharedKey, PandaGPTModel] = {}
_shared_locks: dict[_SharedKey, threading.Lock] = {}
_registry_lock = threading.Lock()


def get_shared_model(
    bundle: str | os.PathLike[str],
    *,
    precision: Precision = "fp32",
    device: str | torch.device = "cpu",
    allow_download: bool = False,
    merge_lora: bool = False,
) -> PandaGPTModel:
    """Like :func:`load_pandagpt`, but one copy per (bundle, precision, device) per process.

    Many LangChain objects (chat model, embeddings, several chains) can then share a single
    multi-GB model. Thread-safe: concurrent first calls load once; different keys load in
    parallel.
    """
    _check_precision(precision)
    key = (str(manifest_path(bundle).resolve()), precision, str(resolve_device(device)), merge_lora)
    with _registry_lock:
        lock = _shared_locks.setdefault(key, threading.Lock())
    with lock:
        model = _shared_models.get(key)
        if model is None:
            model = load_pandagpt(
                bundle,
                precision=precision,
                device=device,
                allow_download=allow_download,
                merge_lora=merge_lora,
            )
            _shared_models[key] = model
    return model


def clear_shared_models() -> None:
    """Forgets every shared model (memory is freed once no caller holds one)."""
    with _registry_lock:
        _shared_models.clear()
