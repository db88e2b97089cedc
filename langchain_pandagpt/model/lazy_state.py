"""Safetensors weights read tensor by tensor, so a load never holds the checkpoint twice.

transformers maps every shard of a checkpoint at the start of ``from_pretrained`` and unmaps
them only at the end. Each page it reads to convert a weight (fp16 on disk -> bf16/fp32, or
-> int8/nf4) therefore stays in the process until the whole model is loaded: measured on a
2.5 GB model, a bf16 load peaked at 5.4 GB and an int8 load at 5.5 GB, the converted weights
plus the file. Handing transformers a state dict of :class:`LazyTensor` instead, where every
tensor is read through its own short-lived mapping, lets each file page go as soon as its
weight is converted (the same loads peaked at 2.9 and 2.8 GB).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import torch
from safetensors import safe_open

SAFETENSORS_INDEX: Final = "model.safetensors.index.json"
SAFETENSORS_SINGLE: Final = "model.safetensors"


class LazyTensor:
    """One tensor of a safetensors file, read when indexed (``tensor[...]``), with the
    ``get_shape``/``get_dtype`` of a safetensors slice (what transformers expects)."""

    __slots__ = ("_dtype", "_shape", "name", "path")

    def __init__(self, path: Path, name: str, shape: list[int], dtype: str) -> None:
        self.path = path
        self.name = name
        self._shape = shape
        self._dtype = dtype

    def get_shape(self) -> list[int]:
        return list(self._shape)

    def get_dtype(self) -> str:
        return self._dtype

    def __getitem__(self, index: Any) -> torch.Tensor:
        # The tensor keeps its own mapping alive after the file is closed, and releases its
        # pages when it is dropped.
        with safe_open(str(self.path), framework="pt") as handle:
            return handle.get_tensor(self.name)[index]

    def __repr__(self) -> str:
        return f"LazyTensor({self.path.name}:{self.name}, {self._dtype}{self._shape})"


def lazy_state_dict(folder: Path) -> dict[str, LazyTensor] | None:
    """Name -> :class:`LazyTensor` for a local safetensors checkpoint (sharded or not); None
    when the folder has no safetensors weights (e.g. ``.bin`` only)."""
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # let transformers report the broken index
        files = sorted({folder / name for name in weight_map.values()})
    elif (folder / SAFETENSORS_SINGLE).is_file():
        files = [folder / SAFETENSORS_SINGLE]
    else:
        return None
    if not all(path.is_file() for path in files):
        return None
    state: dict[str, LazyTensor] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                view = handle.get_slice(name)
                state[name] = LazyTensor(path, name, view.get_shape(), view.get_dtype())
    return state
