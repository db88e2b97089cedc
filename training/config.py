"""The training configuration: one YAML file, validated, with ``--set key=value`` overrides.

Defaults are the reference recipe (``yxuansu/PandaGPT``, 13B row of its README: micro-batch 1,
``max_tgt_len`` 400; the 7B row is ``configs/pandagpt_7b.yaml``): AdamW lr 5e-4, betas
(0.9, 0.95), eps 1e-8, weight decay 0.001, DeepSpeed ``WarmupDecayLR`` (log warmup over
``max(10, 10 %)`` of the steps, then linear decay to 0), gradient clipping 1.0, 2 epochs,
global batch 64, fp16, LoRA r=32 alpha=32 dropout 0.1 on q/k/v/o. Relative paths are relative
to the working directory. ``docs/training.md`` describes every key.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from langchain_pandagpt.errors import PandaGPTError
from langchain_pandagpt.generation.prompt import Fidelity, MediaFusion
from langchain_pandagpt.model.adapter import REFERENCE_LORA_DROPOUT, TARGET_MODULES
from langchain_pandagpt.model.bundle import Precision
from training.data import DataSource, OnError


class ConfigError(PandaGPTError, ValueError):
    """The config file cannot be read or does not validate."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSettings(_Strict):
    """The LoRA of a fresh adapter (ignored with ``init_from_bundle``: the bundle's is kept)."""

    r: int = Field(default=32, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=REFERENCE_LORA_DROPOUT, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(TARGET_MODULES))


class PromptOptions(_Strict):
    """Prompt layout used for training; ``None`` takes the bundle manifest's setting."""

    fidelity: Fidelity | None = None
    media_fusion: MediaFusion | None = None


class TrainConfig(_Strict):
    """Everything a run needs. See ``training/configs/*.yaml`` for annotated examples."""

    # What to train on and where things go.
    setup: str | None = None  # the command that creates this config's inputs (for hints)
    bundle: Path
    data: list[DataSource] = Field(min_length=1)
    feature_cache: Path
    output_dir: Path
    on_error: OnError = "fail"

    # The model.
    precision: Precision = "fp16"  # frozen LLM weights; nf4/int8 = QLoRA
    init_from_bundle: bool = False  # continue the bundle's adapter instead of a fresh one
    lora: LoraSettings = LoraSettings()
    prompt: PromptOptions = PromptOptions()
    gradient_checkpointing: bool = False

    # The recipe.
    max_length: int = Field(default=400, gt=0)  # text tokens after the media prefix (max_tgt_len)
    epochs: int = Field(default=2, gt=0)
    max_steps: int | None = Field(
        default=None, gt=0
    )  # if set, overrides epochs (schedule included)
    global_batch_size: int = Field(default=64, gt=0)
    micro_batch_size: int = Field(default=1, gt=0)  # per process
    learning_rate: float = Field(default=5e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.001
    warmup_ratio: float = Field(default=0.1, ge=0, le=1)
    min_warmup_steps: int = Field(default=10, ge=0)
    warmup_shape: Literal["log", "linear"] = "log"  # DeepSpeed WarmupLR's default is log
    max_grad_norm: float = Field(default=1.0, gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "fp16"
    seed: int = 0

    # Running.
    checkpoint_every: int = Field(default=500, ge=0)  # optimizer steps; 0: only at the end
    keep_checkpoints: int = Field(default=2, gt=0)
    log_every: int = Field(default=10, gt=0)
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"])  # accelerate trackers
    num_workers: int = Field(default=1, ge=0)

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        return "no" if value is False else value  # YAML 1.1 reads a bare `no` as false

    @model_validator(mode="after")
    def _check_batch(self) -> TrainConfig:
        self.accumulation_steps(1)  # the global batch must split into whole micro-batches
        return self

    def accumulation_steps(self, num_processes: int) -> int:
        """Micro-batches per optimizer step and process, so every step sees the global batch."""
        per_step = self.micro_batch_size * num_processes
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"global_batch_size {self.global_batch_size} is not a multiple of "
                f"micro_batch_size x processes = {per_step}"
            )
        return self.global_batch_size // per_step

    def warmup_steps(self, total_steps: int) -> int:
        """``max(min_warmup_steps, warmup_ratio x total)``, as the reference's ``agent.py``."""
        return max(self.min_warmup_steps, int(self.warmup_ratio * total_steps))


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        child = tree.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key} is not a section")
        tree = child
    tree[leaf] = value


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> TrainConfig:
    """Reads a YAML config and applies ``key.sub=value`` overrides (values parsed as YAML)."""
    try:
        tree = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc})") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the config must be a YAML mapping")
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {override!r}: expected KEY=VALUE")
        _set(tree, key.strip(), yaml.safe_load(value))
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid config\n{exc}") from exc
