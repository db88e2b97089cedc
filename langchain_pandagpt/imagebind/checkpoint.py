"""Loading, downloading and converting ImageBind checkpoints.

The official ``imagebind_huge.pth`` is a flat pickled state dict (loaded here with
``weights_only=True``, memory-mapped). Converting it once to safetensors makes later loads
pickle-free and lets us read only the towers a caller needs. The model is built on the meta
device and the weights are assigned straight into it, so peak memory is one copy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from langchain_pandagpt.downloads import cache_dir, download_url
from langchain_pandagpt.errors import CheckpointError, DownloadNotAllowedError
from langchain_pandagpt.imagebind.model import MODALITIES, ImageBindConfig, ImageBindModel

IMAGEBIND_HUGE_URL: Final = "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"
IMAGEBIND_HUGE_FILENAME: Final = "imagebind_huge.pth"
#: Safetensors metadata key that stores the :class:`ImageBindConfig` of a converted file.
CONFIG_METADATA_KEY: Final = "imagebind_config"

TorchDType = torch.dtype
DeviceLike = str | torch.device


def _tower_of(key: str) -> str:
    """``modality_trunks.audio.blocks.0...`` -> ``audio``."""
    parts = key.split(".")
    return parts[1] if len(parts) > 1 else ""


def _read_state_dict(
    path: Path, modalities: Iterable[str]
) -> tuple[dict[str, torch.Tensor], ImageBindConfig | None]:
    """Reads the tensors of ``modalities`` (and the stored config, for safetensors files)."""
    wanted = set(modalities)
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                names = [k for k in handle.keys() if _tower_of(k) in wanted]  # noqa: SIM118
                state = {k: handle.get_tensor(k) for k in names}
        except Exception as exc:  # safetensors raises several error types for bad files
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
        stored = metadata.get(CONFIG_METADATA_KEY)
        return state, ImageBindConfig.from_dict(json.loads(stored)) if stored else None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(
                f"{path}: cannot be loaded as a weights-only pickle ({exc})"
            ) from exc
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot be loaded as a weights-only pickle ({exc}); pass the official "
            "imagebind_huge.pth or a converted .safetensors file"
        ) from exc
    if isinstance(loaded, Mapping) and "model" in loaded and isinstance(loaded["model"], Mapping):
        loaded = loaded["model"]
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(loaded).__name__}")
    return {k: v for k, v in loaded.items() if _tower_of(k) in wanted}, None


def _check_keys(path: Path, model: ImageBindModel, state: Mapping[str, torch.Tensor]) -> None:
    """Shape mismatches first (they mean a wrong config), then missing keys (wrong file)."""
    expected = model.state_dict()
    for key, tensor in state.items():
        if key in expected and tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(tensor.shape)} but the config expects "
                f"{tuple(expected[key].shape)}; pass the ImageBindConfig this checkpoint was "
                "trained with (ImageBindConfig.huge() for imagebind_huge.pth)"
            )
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(
            f"{path}: {len(missing)} ImageBind weights are missing (first: {missing[0]}); is this "
            "an ImageBind checkpoint with the towers you asked for, and the right ImageBindConfig?"
        )


def resolve_imagebind_checkpoint(
    checkpoint: str | os.PathLike[str] | None, *, allow_download: bool = False
) -> Path:
    """Finds the checkpoint file: a path, a directory holding it, or the user cache.

    With ``allow_download`` the official file is fetched into the cache when absent.
    """
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if path.is_dir():
            for name in (
                "imagebind.safetensors",
                "imagebind_huge.safetensors",
                IMAGEBIND_HUGE_FILENAME,
            ):
                if (path / name).is_file():
                    return path / name
            raise CheckpointError(
                f"{path}: no imagebind.safetensors, imagebind_huge.safetensors or "
                f"{IMAGEBIND_HUGE_FILENAME} in this directory"
            )
        if not path.is_file():
            raise CheckpointError(
                f"{path}: ImageBind checkpoint not found; download it with "
                "`pandagpt download imagebind` or pass allow_download=True"
            )
        return path
    folder = cache_dir("imagebind")
    for name in ("imagebind_huge.safetensors", IMAGEBIND_HUGE_FILENAME):
        if (folder / name).is_file():
            return folder / name
    if not allow_download:
        raise DownloadNotAllowedError(
            f"imagebind_huge is not in the cache ({folder}) and downloads are off; pass "
            "allow_download=True, run `pandagpt download imagebind`, or give a local path"
        )
    return download_url(IMAGEBIND_HUGE_URL, folder / IMAGEBIND_HUGE_FILENAME)


def load_imagebind(
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    config: ImageBindConfig | None = None,
    modalities: Iterable[str] | None = None,
    device: DeviceLike = "cpu",
    dtype: TorchDType = torch.float32,
    allow_download: bool = False,
) -> ImageBindModel:
    """Loads ImageBind weights into an eval-mode, frozen :class:`ImageBindModel`.

    ``checkpoint`` is the official ``.pth``, a converted ``.safetensors`` file, a directory
    holding one, or ``None`` for the user cache. ``modalities`` restricts which towers are
    built and read (default: all six). ``config`` defaults to the one stored in a converted
    file, else ``imagebind_huge``.
    """
    path = resolve_imagebind_checkpoint(checkpoint, allow_download=allow_download)
    towers = tuple(MODALITIES if modalities is None else modalities)
    state, stored_config = _read_state_dict(path, towers)
    with torch.device("meta"):
        model = ImageBindModel(config or stored_config or ImageBindConfig.huge(), towers)
    _check_keys(path, model, state)
    model.load_state_dict(state, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype)
    model.eval().requires_grad_(False)
    return model


def save_imagebind_safetensors(model: ImageBindModel, path: str | os.PathLike[str]) -> Path:
    """Writes ``model``'s weights and config to a safetensors file."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {CONFIG_METADATA_KEY: json.dumps(model.config.to_dict())}
    save_file(state, str(out), metadata=metadata)
    return out


def convert_imagebind_checkpoint(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    config: ImageBindConfig | None = None,
) -> Path:
    """Converts an official ``.pth`` checkpoint into a pickle-free ``.safetensors`` file.

    The weights are loaded (and checked against ``config``) first, so a bad source never
    produces a half-valid output file.
    """
    model = load_imagebind(source, config=config)
    return save_imagebind_safetensors(model, destination)
