"""``pandagpt.json``: the bundle manifest, validated by pydantic.

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
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from langchain_pandagpt.errors import CheckpointError
from langchain_pandagpt.imagebind.model import MODALITIES, ImageBindConfig

MANIFEST_NAME: Final = "pandagpt.json"
FORMAT_VERSION: Final = 1
#: ``imagebind`` value meaning the official ``imagebind_huge.pth`` from the user cache.
OFFICIAL_IMAGEBIND: Final = "official"

Fidelity = Literal["default", "reference"]
MediaFusion = Literal["sum", "sequence"]
AdapterFormat = Literal["reference", "peft"]

#: The reference PandaGPT's embedding scales: audio is L2-normalised only (its x20 is skipped),
#: thermal keeps its x10; depth and IMU had no path there and keep ImageBind's own x5.
#: Vision has no logit scale at all.
REFERENCE_EMBEDDING_SCALES: Final[Mapping[str, bool]] = {
    "audio": False,
    "thermal": True,
    "depth": True,
    "imu": True,
}


class _Strict(BaseModel):
    # strict: JSON true is not an int, 1 is not a str; forbid: a typo is an error, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class AdapterSpec(_Strict):
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
    vocab_size: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _projection_needs_peft(self) -> AdapterSpec:
        if self.projection is not None and self.format == "reference":
            raise ValueError("adapter.projection is only used with format 'peft'")
        return self


class BundleManifest(_Strict):
    """The contents of ``pandagpt.json``; paths are relative to the bundle directory.

    ``llm``: a directory (relative or absolute) or a Hugging Face hub id.
    ``imagebind``: a ``.safetensors``/``.pth`` file, or ``"official"`` (user cache).
    ``imagebind_config``: :class:`ImageBindConfig` fields; default: the one stored in a
    converted file, else ``imagebind_huge``. ``imagebind_towers``: towers to build.
    ``bos_token_id``: the id put before the prompt; ``None`` uses the tokenizer's (the 13B
    release probably used 2, see the reference notes). ``embedding_scales``: per media kind,
    whether ImageBind's logit scale is applied (:data:`REFERENCE_EMBEDDING_SCALES` by default).
    ``fidelity``/``media_fusion``: default prompt settings (``generation/prompt.py``).
    ``max_context``: the LLM's trained context length.
    """

    format_version: int = FORMAT_VERSION
    name: str = Field(min_length=1)
    llm: str = Field(default="llm", min_length=1)
    imagebind: str = Field(default="imagebind.safetensors", min_length=1)
    adapter: AdapterSpec = Field(default_factory=AdapterSpec)
    imagebind_config: dict[str, Any] | None = None
    imagebind_towers: tuple[str, ...] = MODALITIES
    bos_token_id: int | None = Field(default=None, ge=0)
    embedding_scales: dict[str, bool] = Field(
        default_factory=lambda: dict(REFERENCE_EMBEDDING_SCALES)
    )
    fidelity: Fidelity = "default"
    media_fusion: MediaFusion = "sum"
    max_context: int = Field(default=2048, gt=0)

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value > FORMAT_VERSION:
            raise ValueError(
                f"format_version {value} is newer than this library understands "
                f"({FORMAT_VERSION}); upgrade langchain-pandagpt"
            )
        return value

    @field_validator("imagebind_towers", mode="before")
    @classmethod
    def _towers(cls, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list | tuple):
            raise ValueError("imagebind_towers must be a list of tower names")
        unknown = sorted(set(value) - set(MODALITIES))
        if unknown or not value:
            raise ValueError(f"imagebind_towers must name some of {', '.join(MODALITIES)}")
        return tuple(value)

    @field_validator("imagebind_config")
    @classmethod
    def _imagebind_config(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            ImageBindConfig.from_dict(value)  # raises ValueError naming the bad field
        return value

    @field_validator("embedding_scales")
    @classmethod
    def _scales(cls, value: dict[str, bool]) -> dict[str, bool]:
        unknown = sorted(set(value) - set(REFERENCE_EMBEDDING_SCALES))
        if unknown:
            raise ValueError(
                f"unknown keys {unknown}; it takes {', '.join(REFERENCE_EMBEDDING_SCALES)} "
                "(vision has no scale)"
            )
        return {**REFERENCE_EMBEDDING_SCALES, **value}

    def applies_logit_scale(self, tower: str) -> bool:
        """Whether ImageBind's logit scale is applied to embeddings of ``tower``."""
        return self.embedding_scales.get(tower, True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``format_version`` first)."""
        values = self.model_dump(mode="json")
        return {"format_version": values.pop("format_version"), **values}

    def write(self, bundle_dir: str | os.PathLike[str]) -> Path:
        """Writes ``pandagpt.json`` into ``bundle_dir``."""
        path = Path(bundle_dir) / MANIFEST_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = MANIFEST_NAME) -> BundleManifest:
        """Validates parsed JSON; errors name ``source`` and every bad field."""
        try:
            # Validated as JSON: strict types, yet arrays fill tuples and objects fill models.
            return cls.model_validate_json(json.dumps(dict(data)))
        except ValidationError as exc:
            raise CheckpointError(f"{source}: invalid manifest: {_explain(exc)}") from None

    @classmethod
    def read(cls, bundle: str | os.PathLike[str]) -> BundleManifest:
        """Reads the manifest of a bundle directory (or a ``pandagpt.json`` path)."""
        path = manifest_path(bundle)
        if not path.is_file():
            raise CheckpointError(
                f"{path}: bundle manifest not found; create a bundle with "
                "`pandagpt create-tiny-checkpoint` or write pandagpt.json (see the README)"
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: not a readable JSON manifest ({exc})") from exc
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: the manifest must be a JSON object")
        return cls.from_mapping(data, str(path))


def _explain(error: ValidationError) -> str:
    """One ``field: problem`` clause per error, in pydantic's order."""
    parts = []
    for problem in error.errors(include_url=False):
        where = ".".join(str(part) for part in problem["loc"]) or "manifest"
        message = str(problem["msg"]).removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown key (check its spelling)"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def manifest_path(bundle: str | os.PathLike[str]) -> Path:
    """``<bundle>/pandagpt.json``, or ``bundle`` itself when it names a ``.json`` file."""
    path = Path(bundle).expanduser()
    return path if path.suffix == ".json" else path / MANIFEST_NAME
