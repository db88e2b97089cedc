"""Vicuna v0 = LLaMA-1 + lmsys' delta, applied shard by shard (``pandagpt apply-delta``).

The released PandaGPT adapters were trained on Vicuna **v0**, which lmsys only published as a
delta over LLaMA-1 (``lmsys/vicuna-{7b,13b}-delta-v0``). The rule below is the one of FastChat
v0.1.10, ``fastchat/model/apply_delta.py`` at tag ``v0.1.10`` (commit ``f34f28ce``, 2023-04-11),
read for its rule only:

1. base and delta are loaded in fp16;
2. ``[PAD]`` is added to the *base* tokenizer as its pad token (LLaMA-1: 32000 -> 32001);
3. the base's input embeddings and LM head are resized to that length and the new rows are set
   to zero;
4. every tensor of the base gets the delta tensor of the same name added, in fp16 (every base
   name must exist in the delta);
5. the result is saved with the base's config (``vocab_size`` now 32001) and the **delta's**
   tokenizer (for v0 that is LLaMA-1's plus ``[PAD]``; the 13B one also carries lmsys'
   special-token map, which decides the BOS id PandaGPT-13B was trained with).

FastChat held both models in memory (~55 GB for 13B). Here memory stays near one output shard
(1 GiB by default) plus a few hundred MiB: ``.bin`` files are memory-mapped with
``torch.load(mmap=True, weights_only=True)`` and safetensors opened lazily, sources are matched
by tensor name across differently-sharded base and delta, and a source file is closed (its
mapped pages released) after every 256 MiB taken from it and after each output shard. The
output (safetensors shards, index, config, generation config, tokenizer) is written into a
hidden sibling folder and renamed into place at the end, so a run that dies leaves nothing
that loads, and the next run removes the leftovers.

RoPE ``inv_freq`` buffers, which old conversions saved, are not parameters and are skipped
(transformers recomputes them from the config).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from langchain_pandagpt.errors import CheckpointError, DownloadNotAllowedError

logger = logging.getLogger(__name__)

PAD_TOKEN: Final = "[PAD]"
#: The two tensors resized by the ``[PAD]`` row (LLaMA's input embeddings and untied LM head).
EMBEDDING_NAMES: Final = ("model.embed_tokens.weight", "lm_head.weight")
DEFAULT_MAX_SHARD_BYTES: Final = 1 << 30
SAFETENSORS_INDEX: Final = "model.safetensors.index.json"
SAFETENSORS_SINGLE: Final = "model.safetensors"
BIN_INDEX: Final = "pytorch_model.bin.index.json"
BIN_SINGLE: Final = "pytorch_model.bin"
TOKENIZER_FILES: Final = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
#: Size names of the LLaMA-1 family by hidden size, for error messages.
LLAMA1_SIZES: Final = {4096: "7B", 5120: "13B", 6656: "33B", 8192: "65B"}

_SKIPPED = re.compile(r".*\.rotary_emb\.inv_freq")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_SAFETENSORS_DTYPES: Final = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}
_DIMENSIONS: Final = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor is stored, and what it is (``dtype`` None: not a float type)."""

    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype | None


@dataclass(frozen=True)
class Checkpoint:
    """A Hugging Face LLaMA folder: its config and a name -> tensor map over all its shards."""

    role: str  # "BASE" or "DELTA", for messages
    root: Path
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]


# --------------------------------------------------------------------------------------------
# Reading weight files lazily
# --------------------------------------------------------------------------------------------


class ShardReader:
    """One weight file, opened without reading it: safetensors through ``safe_open``, ``.bin``
    through a weights-only memory map (old non-zip pickles are loaded whole, ``lazy`` False)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stack = ExitStack()
        self._handle: Any = None
        self._state: Mapping[str, torch.Tensor] | None = None
        self.lazy = True
        try:
            if path.suffix == ".safetensors":
                self._handle = self._stack.enter_context(safe_open(str(path), framework="pt"))
            else:
                self._state, self.lazy = _load_bin(path)
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors and torch raise many types for bad files
            raise CheckpointError(
                f"{path}: not a readable weight file ({exc}); the download may be incomplete, "
                "fetch it again"
            ) from exc

    def infos(self) -> dict[str, TensorInfo]:
        """Name -> shape and dtype of every tensor in the file (no data is read)."""
        if self._handle is not None:
            infos = {}
            for name in self._handle.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                view = self._handle.get_slice(name)
                dtype = _SAFETENSORS_DTYPES.get(view.get_dtype())
                infos[name] = TensorInfo(self.path, tuple(view.get_shape()), dtype)
            return infos
        assert self._state is not None
        return {
            name: TensorInfo(
                self.path, tuple(t.shape), t.dtype if torch.is_floating_point(t) else None
            )
            for name, t in self._state.items()
        }

    def tensor(self, name: str) -> torch.Tensor:
        if self._handle is not None:
            return self._handle.get_tensor(name)
        assert self._state is not None
        return self._state[name]

    def close(self) -> None:
        """Unmaps the file (tensors taken from it must be dropped for the memory to return)."""
        self._stack.close()
        self._handle = None
        self._state = None


def _load_bin(path: Path) -> tuple[Mapping[str, torch.Tensor], bool]:
    """A ``.bin`` state dict, memory-mapped when the file allows it, and whether it is."""
    lazy = True
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        logger.info("%s: an old (non-zip) pickle, loaded whole instead of memory-mapped", path)
        state = torch.load(path, map_location="cpu", weights_only=True)
        lazy = False
    if not isinstance(state, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise CheckpointError(f"{path}: expected a state dict of named tensors")
    return state, lazy


def _weight_files(root: Path, role: str) -> tuple[list[Path], dict[str, str] | None]:
    """The weight files of a folder (safetensors preferred) and its index's name -> file map."""
    for index_name, single in ((SAFETENSORS_INDEX, SAFETENSORS_SINGLE), (BIN_INDEX, BIN_SINGLE)):
        index = root / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{index}: not a readable shard index ({exc})") from exc
            files = sorted({root / name for name in weight_map.values()})
            missing = [path.name for path in files if not path.is_file()]
            if missing:
                raise CheckpointError(
                    f"{role} {root}: {len(missing)} shard(s) listed in {index_name} are missing "
                    f"({', '.join(missing[:3])}); the download is incomplete, run it again"
                )
            return files, weight_map
        if (root / single).is_file():
            return [root / single], None
    raise CheckpointError(
        f"{role} {root}: no weights found (expected {SAFETENSORS_INDEX}, {SAFETENSORS_SINGLE}, "
        f"{BIN_INDEX} or {BIN_SINGLE}); give a Hugging Face-format LLaMA folder"
    )


def read_checkpoint(root: Path, role: str) -> Checkpoint:
    """Reads ``config.json`` and the name, shape and dtype of every tensor (not the data)."""
    config_path = root / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{role} {root}: no config.json; give a Hugging Face-format LLaMA folder"
        ) from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: not a readable JSON config ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: the config must be a JSON object")
    files, weight_map = _weight_files(root, role)
    tensors: dict[str, TensorInfo] = {}
    for path in files:
        reader = ShardReader(path)
        try:
            tensors.update(reader.infos())
        finally:
            reader.close()
    if weight_map is not None:
        absent = [name for name, file in weight_map.items() if tensors.get(name) is None]
        misplaced = [
            n for n in weight_map if n in tensors and tensors[n].file.name != weight_map[n]
        ]
        if absent or misplaced:
            first = (absent or misplaced)[0]
            raise CheckpointError(
                f"{role} {root}: the shard index does not match the shards ({first!r} is listed "
                f"in {weight_map[first]} but not stored there); fetch the folder again"
            )
    return Checkpoint(
        role=role,
        root=root,
        config=config,
        tensors={name: info for name, info in tensors.items() if not _SKIPPED.fullmatch(name)},
    )


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _rope_theta(config: Mapping[str, Any]) -> float | None:
    theta = config.get("rope_theta")
    parameters = config.get("rope_parameters")
    if theta is None and isinstance(parameters, Mapping):
        theta = parameters.get("rope_theta")
    return float(theta) if theta is not None else None


def llama2_markers(config: Mapping[str, Any]) -> list[str]:
    """The config values that say "LLaMA-2 or later, not LLaMA-1" (empty for LLaMA-1)."""
    markers = []
    positions = config.get("max_position_embeddings", config.get("max_sequence_length", 2048))
    if positions != 2048:
        markers.append(f"max_position_embeddings {positions} (LLaMA-1: 2048)")
    eps = config.get("rms_norm_eps")
    if eps is not None and abs(float(eps) - 1e-6) > 1e-12:
        markers.append(f"rms_norm_eps {eps} (LLaMA-1: 1e-06)")
    heads, kv_heads = config.get("num_attention_heads"), config.get("num_key_value_heads")
    if kv_heads is not None and kv_heads != heads:
        markers.append(f"grouped-query attention ({kv_heads} key/value heads for {heads})")
    theta = _rope_theta(config)
    if theta is not None and theta != 10000.0:
        markers.append(f"rope_theta {theta:g} (LLaMA-1: 10000)")
    scaling = config.get("rope_scaling")
    if isinstance(scaling, Mapping) and scaling.get("rope_type", scaling.get("type")) != "default":
        markers.append(f"rope_scaling {dict(scaling)}")
    return markers


def _size_name(config: Mapping[str, Any]) -> str:
    dims = ", ".join(f"{key.removeprefix('num_')} {config.get(key)}" for key in _DIMENSIONS)
    size = LLAMA1_SIZES.get(config.get("hidden_size", 0))
    return f"{size} ({dims})" if size else dims


def check_configs(base: Checkpoint, delta: Checkpoint) -> None:
    """Refuses what is not LLaMA-1 + a Vicuna delta of the same size, saying why."""
    for side in (base, delta):
        model_type = side.config.get("model_type", "llama")
        if model_type != "llama":
            raise CheckpointError(
                f"{side.role} {side.root}: model_type {model_type!r}; only LLaMA checkpoints "
                "take a Vicuna delta"
            )
    markers = llama2_markers(base.config)
    if markers:
        raise CheckpointError(
            f"BASE {base.root} is not LLaMA-1 ({'; '.join(markers)}): Vicuna v0 deltas only "
            "apply to Meta's original LLaMA-1 weights, converted to Hugging Face format"
        )
    markers = llama2_markers(delta.config)
    if markers:
        raise CheckpointError(
            f"DELTA {delta.root} was made for a later LLaMA ({'; '.join(markers)}); PandaGPT "
            "needs the Vicuna v0 delta (lmsys/vicuna-7b-delta-v0 or lmsys/vicuna-13b-delta-v0)"
        )
    if base.config.get("tie_word_embeddings", False):
        raise CheckpointError(
            f"BASE {base.root}: tie_word_embeddings is set; LLaMA-1 has an untied LM head"
        )
    if any(base.config.get(key) != delta.config.get(key) for key in _DIMENSIONS):
        raise CheckpointError(
            f"BASE {base.root} is LLaMA {_size_name(base.config)} but DELTA {delta.root} is "
            f"for {_size_name(delta.config)}: use the LLaMA-1 of the delta's size"
        )


def _listing(names: Iterable[str], limit: int = 5) -> str:
    names = sorted(names, key=natural_key)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_tensors(base: Checkpoint, delta: Checkpoint, base_vocab: int, new_vocab: int) -> None:
    """Names, shapes, dtypes and vocabulary sizes of both sides, checked before any data is read.

    ``base_vocab`` is the base tokenizer's length, ``new_vocab`` that length with ``[PAD]``.
    """
    missing_head = [name for name in EMBEDDING_NAMES if name not in base.tensors]
    if missing_head:
        raise CheckpointError(
            f"BASE {base.root} has no {', '.join(missing_head)}: not a LlamaForCausalLM "
            "checkpoint in Hugging Face format"
        )
    rows = base.tensors[EMBEDDING_NAMES[0]].shape[0]
    config_vocab = base.config.get("vocab_size", rows)
    if rows != base_vocab or config_vocab != base_vocab:
        raise CheckpointError(
            f"BASE {base.root}: its tokenizer has {base_vocab} tokens but its embeddings "
            f"{rows} rows (config vocab_size {config_vocab}); LLaMA-1 has 32000 of each"
        )
    delta_rows = delta.tensors.get(EMBEDDING_NAMES[0], TensorInfo(delta.root, (0,), None)).shape[0]
    delta_vocab = delta.config.get("vocab_size", delta_rows)
    if delta_vocab == base_vocab or delta_rows == base_vocab:
        raise CheckpointError(
            f"DELTA {delta.root} has the base's vocabulary ({base_vocab} tokens, no {PAD_TOKEN} "
            "row): it is a Vicuna v1.1-style delta, applied without [PAD]. The PandaGPT adapters "
            "need Vicuna v0 (vocabulary 32001): lmsys/vicuna-7b-delta-v0 or "
            "lmsys/vicuna-13b-delta-v0"
        )
    if delta_vocab != new_vocab:
        raise CheckpointError(
            f"DELTA {delta.root} has a vocabulary of {delta_vocab}, but BASE's tokenizer plus "
            f"{PAD_TOKEN} has {new_vocab}: this delta does not belong to this base"
        )
    missing = base.tensors.keys() - delta.tensors.keys()
    extra = delta.tensors.keys() - base.tensors.keys()
    if missing:
        raise CheckpointError(
            f"DELTA {delta.root} lacks {len(missing)} tensor(s) of the base: {_listing(missing)}"
        )
    if extra:
        raise CheckpointError(
            f"DELTA {delta.root} has {len(extra)} tensor(s) the base lacks: {_listing(extra)}"
        )
    for name in sorted(base.tensors, key=natural_key):
        source, patch = base.tensors[name], delta.tensors[name]
        for side, info in ((base, source), (delta, patch)):
            if info.dtype is None:
                raise CheckpointError(
                    f"{side.role} {info.file}: tensor {name} is not floating point"
                )
        expected = (new_vocab, *source.shape[1:]) if name in EMBEDDING_NAMES else source.shape
        if patch.shape != expected:
            raise CheckpointError(
                f"{name}: BASE has shape {list(source.shape)}, DELTA {list(patch.shape)} "
                f"(expected {list(expected)}); base and delta are of different models or sizes"
            )


# --------------------------------------------------------------------------------------------
# Applying
# --------------------------------------------------------------------------------------------


def natural_key(name: str) -> list[Any]:
    """Sort key that puts ``layers.2`` before ``layers.10`` (so shards follow the layers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def plan_shards(shapes: Mapping[str, tuple[int, ...]], max_shard_bytes: int) -> list[list[str]]:
    """Tensor names in layer order, packed into fp16 shards of at most ``max_shard_bytes``
    (a single larger tensor gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name in sorted(shapes, key=natural_key):
        nbytes = 2 * _numel(shapes[name])
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards if shards[0] else []


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def apply_delta_tensor(name: str, base: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """One output tensor: base in fp16, zero rows appended to the embeddings and LM head up to
    the delta's row count, plus the delta in fp16 (FastChat v0.1.10's arithmetic)."""
    base16 = base.to(torch.float16)
    if name in EMBEDDING_NAMES and base16.shape[0] != delta.shape[0]:
        padded = base16.new_zeros((delta.shape[0], *base16.shape[1:]))
        padded[: base16.shape[0]] = base16
        base16 = padded
    return (base16 + delta.to(torch.float16)).contiguous()


def write_shard(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Writes one output shard (the step a crash test interrupts)."""
    save_file(tensors, str(path), metadata={"format": "pt"})


#: A memory-mapped source is reopened after this many bytes were taken from it, so the pages
#: it touched leave the process (they stay mapped while the file is open).
REOPEN_BYTES: Final = 256 << 20


class _Readers:
    """Source files opened on demand. Memory-mapped ones are closed after every
    :data:`REOPEN_BYTES` taken and after each output shard; eager ones (old pickles) stay
    loaded until their last tensor is used."""

    def __init__(self, uses: Counter[Path]) -> None:
        self._uses = uses
        self._open: dict[Path, ShardReader] = {}
        self._taken: Counter[Path] = Counter()

    def take(self, path: Path, name: str) -> torch.Tensor:
        reader = self._open.get(path)
        if reader is None:
            reader = self._open[path] = ShardReader(path)
            self._taken[path] = 0
        self._uses[path] -= 1
        tensor = reader.tensor(name)  # keeps its own mapping alive until dropped
        self._taken[path] += tensor.numel() * tensor.element_size()
        if (reader.lazy and self._taken[path] >= REOPEN_BYTES) or self._uses[path] <= 0:
            reader.close()
            del self._open[path]
        return tensor

    def release(self) -> None:
        for path, reader in list(self._open.items()):
            if reader.lazy:
                reader.close()
                del self._open[path]

    def close(self) -> None:
        for reader in self._open.values():
            reader.close()
        self._open.clear()


def _write_weights(
    base: Checkpoint, delta: Checkpoint, folder: Path, max_shard_bytes: int, progress: bool
) -> None:
    shards = plan_shards({n: i.shape for n, i in delta.tensors.items()}, max_shard_bytes)
    uses = Counter(info.file for info in base.tensors.values())
    uses.update(info.file for info in delta.tensors.values())
    readers = _Readers(uses)
    weight_map: dict[str, str] = {}
    total = 0
    try:
        for number, names in enumerate(shards, start=1):
            filename = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
            out: dict[str, torch.Tensor] = {}
            for name in tqdm(names, desc=filename, unit="tensor", disable=not progress):
                source = readers.take(base.tensors[name].file, name)
                patch = readers.take(delta.tensors[name].file, name)
                out[name] = apply_delta_tensor(name, source, patch)
                del source, patch
                weight_map[name] = filename
                total += out[name].numel() * out[name].element_size()
            write_shard(out, folder / filename)
            del out
            readers.release()
            logger.info("wrote %s (%d tensors)", filename, len(names))
    finally:
        readers.close()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def _write_configs(base: Checkpoint, new_vocab: int, folder: Path) -> None:
    """The base's config with the new vocabulary, as FastChat's ``save_pretrained`` left it,
    and the base's generation config (derived from the config when it has none)."""
    config = {key: value for key, value in base.config.items() if key != "_name_or_path"}
    config.update(architectures=["LlamaForCausalLM"], vocab_size=new_vocab, torch_dtype="float16")
    if "dtype" in config:
        config["dtype"] = "float16"
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = base.root / "generation_config.json"
    if generation.is_file():
        shutil.copyfile(generation, folder / generation.name)
    else:
        derived: dict[str, Any] = {"_from_model_config": True}
        derived.update(
            {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
        )
        (folder / generation.name).write_text(json.dumps(derived, indent=2) + "\n")


def _write_tokenizer(base_tokenizer: Any, delta_root: Path, folder: Path) -> str:
    """Copies the delta's tokenizer files as they are (FastChat saved the delta's tokenizer), or,
    for a delta without one, saves the base tokenizer with ``[PAD]`` added."""
    files = [delta_root / name for name in TOKENIZER_FILES if (delta_root / name).is_file()]
    if any(path.name in ("tokenizer.model", "tokenizer.json") for path in files):
        for path in files:
            shutil.copyfile(path, folder / path.name)
        return "the delta's"
    base_tokenizer.save_pretrained(str(folder))
    return f"the base's plus {PAD_TOKEN}"


def _check_written_tokenizer(folder: Path, base_vocab: Mapping[str, int], new_vocab: int) -> None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # transformers raises many types for bad tokenizer files
        raise CheckpointError(f"the delta's tokenizer cannot be loaded ({exc})") from exc
    vocab = tokenizer.get_vocab()
    pad_id = vocab.get(PAD_TOKEN)
    if len(tokenizer) != new_vocab or pad_id != new_vocab - 1:
        raise CheckpointError(
            f"the delta's tokenizer has {len(tokenizer)} tokens and {PAD_TOKEN} at {pad_id}; "
            f"expected {new_vocab} tokens with {PAD_TOKEN} last, as in Vicuna v0"
        )
    changed = [token for token, index in base_vocab.items() if vocab.get(token) != index]
    if changed:
        raise CheckpointError(
            f"the delta's tokenizer does not extend the base's by {PAD_TOKEN} (e.g. token "
            f"{changed[0]!r} has another id): base and delta come from different tokenizers"
        )


def _temporary_sibling(out: Path, suffix: str) -> Path:
    return out.parent / f".{out.name}.{suffix}"


def is_applied(folder: str | os.PathLike[str]) -> bool:
    """True for a finished ``apply_delta`` output (it only appears once complete)."""
    path = Path(folder)
    return (path / "config.json").is_file() and (path / SAFETENSORS_INDEX).is_file()


def resolve_model_folder(
    source: str | os.PathLike[str], *, role: str, allow_download: bool
) -> Path:
    """A local folder as is, else a Hugging Face repo id from the cache or (when allowed) the
    Hub, fetching one weight format only."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    text = str(source)
    if path.exists() or not _HUB_ID.fullmatch(text):
        raise CheckpointError(
            f"{role} {text}: not a folder and not a Hugging Face repo id (owner/name); give the "
            "folder that holds config.json, the tokenizer and the weights"
        )
    if not allow_download:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(text, local_files_only=True))
        except Exception as exc:  # not cached (huggingface_hub raises several types)
            raise DownloadNotAllowedError(
                f"{role} {text}: no such folder, and not in the Hugging Face cache while "
                "downloads are off; allow downloads or give a local folder"
            ) from exc
    from langchain_pandagpt.model import hub

    return hub.download_llm(text).path


def apply_delta(
    base: str | os.PathLike[str],
    delta: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    allow_download: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Builds Vicuna v0 in ``out`` from a LLaMA-1 ``base`` and a v0 ``delta`` (folders or Hub
    ids), streaming shard by shard; returns ``out``. See the module docstring for the rule.

    Everything is checked before any weights are read; ``out`` appears only when complete.
    """
    from transformers import AutoTokenizer

    target = Path(out).expanduser()
    if target.exists() and not overwrite:
        raise CheckpointError(f"{target} already exists; remove it or pass overwrite (--force)")
    base_root = resolve_model_folder(base, role="BASE", allow_download=allow_download)
    delta_root = resolve_model_folder(delta, role="DELTA", allow_download=allow_download)
    base_ckpt = read_checkpoint(base_root, "BASE")
    delta_ckpt = read_checkpoint(delta_root, "DELTA")
    check_configs(base_ckpt, delta_ckpt)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(base_root))
    except Exception as exc:  # transformers raises many types for missing/bad tokenizer files
        raise CheckpointError(f"BASE {base_root}: its tokenizer cannot be loaded ({exc})") from exc
    base_vocab = dict(tokenizer.get_vocab())
    if PAD_TOKEN in base_vocab:
        raise CheckpointError(
            f"BASE {base_root}: its tokenizer already has {PAD_TOKEN}; this looks like a model "
            "with the delta already applied, not LLaMA-1"
        )
    base_length = len(tokenizer)
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    new_vocab = len(tokenizer)
    check_tensors(base_ckpt, delta_ckpt, base_length, new_vocab)

    partial = _temporary_sibling(target, "partial")
    if partial.exists():
        logger.info("removing %s, left by an interrupted run", partial)
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        logger.info("applying %s to %s -> %s", delta_root, base_root, target)
        _write_weights(base_ckpt, delta_ckpt, partial, max_shard_bytes, progress)
        _write_configs(base_ckpt, new_vocab, partial)
        origin = _write_tokenizer(tokenizer, delta_root, partial)
        _check_written_tokenizer(partial, base_vocab, new_vocab)
        logger.info("tokenizer: %s (%d tokens)", origin, new_vocab)
        _move_into_place(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target


def _move_into_place(partial: Path, target: Path) -> None:
    """Renames the finished folder to ``target`` (replacing an old one last)."""
    if not target.exists():
        os.replace(partial, target)
        return
    old = _temporary_sibling(target, "old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(partial, target)
    shutil.rmtree(old, ignore_errors=True)
