"""The training loop: accelerate for devices, precision, accumulation and distribution.

One optimizer step consumes exactly ``global_batch_size`` samples, split over processes and
micro-batches (:mod:`training.batches`), so its gradient is the same on 1 or N processes: the
mean over micro-batches of each micro-batch's token-mean loss, as in the reference's DeepSpeed
setup. The learning rate follows DeepSpeed's ``WarmupDecayLR`` (see :func:`lr_factor`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from langchain_pandagpt.errors import CheckpointError
from langchain_pandagpt.generation.prompt import PromptLayout, PromptSettings
from training.atomic import writing
from training.batches import (
    Batch,
    FeatureDataset,
    attach_features,
    collate,
    epoch_order,
    rank_indices,
)
from training.checkpoints import OUTPUT_FIX, Checkpointer, Progress, list_checkpoints
from training.config import ConfigError, TrainConfig
from training.data import DataError, read_dataset
from training.features import FeatureCache
from training.metrics import METRICS, append_metrics, truncate_metrics
from training.model import PandaGPTForTraining, load_for_training


def lr_factor(step: int, warmup: int, total: int, shape: str) -> float:
    """DeepSpeed ``WarmupDecayLR``: the fraction of the peak LR used by optimizer step ``step``.

    Warmup from 0 (``log``: ``ln(step+1)/ln(warmup)``, DeepSpeed's default; or ``linear``),
    then linear decay to 0 at ``total``.
    """
    if step < warmup:
        if shape == "linear" or step == 0:
            return step / warmup
        return math.log(step + 1) / math.log(warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


@dataclass
class TrainResult:
    """How a call to :func:`train` ended."""

    step: int
    total_steps: int
    checkpoint: Path | None
    last_loss: float | None


def _hparams(config: TrainConfig) -> dict[str, Any]:
    """Flat scalar hyperparameters, as trackers like TensorBoard require."""
    flat: dict[str, Any] = {}
    for key, value in config.model_dump(mode="json").items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in flat.items()}


def _accelerator(config: TrainConfig, text_only_samples: bool) -> Accelerator:
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        log_with=config.report_to or None,
        project_dir=str(config.output_dir),
        step_scheduler_with_optimizer=False,  # stepped by hand, once per optimizer step
        # A batch without media leaves the projection without gradient; DDP must know.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=text_only_samples)],
    )
    accelerator.gradient_accumulation_steps = config.accumulation_steps(accelerator.num_processes)
    missing = set(config.report_to) - {str(tracker) for tracker in accelerator.log_with}
    if missing:  # accelerate drops trackers whose package is missing without a word
        raise ConfigError(
            f"report_to names {', '.join(sorted(missing))}, which is not installed: "
            "pip install it, or set report_to: []"
        )
    if accelerator.state.deepspeed_plugin is not None:
        # DeepSpeed reads these from its own config, and with no prepared DataLoader accelerate
        # cannot fill "auto" values: make them this config's.
        accelerator.state.deepspeed_plugin.deepspeed_config.update(
            train_micro_batch_size_per_gpu=config.micro_batch_size,
            gradient_accumulation_steps=accelerator.gradient_accumulation_steps,
            gradient_clipping=config.max_grad_norm,
        )
    return accelerator


class Trainer:
    """One training run on this process; build it on every process (``accelerate launch``).

    Construction checks the data and the feature cache before any model is loaded, so a bad
    dataset fails in seconds; then it loads the model and sets up optimizer and schedule.
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.output_dir = Path(config.output_dir)
        report = read_dataset(config.data)
        self.accelerator = _accelerator(config, any(not s.media for s in report.samples))
        cache = FeatureCache(config.feature_cache)
        keys = attach_features(report, cache, progress=self.accelerator.is_main_process)
        self.accelerator.print(report.summary())
        samples = report.usable(config.on_error)
        self.steps_per_epoch = len(samples) // config.global_batch_size
        if self.steps_per_epoch == 0:
            raise DataError(
                f"{len(samples)} usable samples is less than one global batch "
                f"({config.global_batch_size})"
            )
        total = config.max_steps or config.epochs * self.steps_per_epoch
        self.progress = Progress(0, total, len(samples), config.global_batch_size, config.seed)

        set_seed(config.seed)
        model = load_for_training(config, self.accelerator.device)
        self.dataset = FeatureDataset(
            samples,
            keys,
            cache,
            model.tokenizer,
            bos_token_id=model.bos_token_id,
            settings=PromptSettings(
                fidelity=config.prompt.fidelity or model.manifest.fidelity,
                media_fusion=config.prompt.media_fusion or model.manifest.media_fusion,
            ),
            max_length=config.max_length,
        )
        pad_id = model.tokenizer.pad_token_id
        self.pad_id: int = model.tokenizer.eos_token_id if pad_id is None else pad_id
        self._prepare(PandaGPTForTraining(model))
        self.resumed_from: Path | None = None

    def _prepare(self, module: PandaGPTForTraining) -> None:
        """Optimizer and schedule of the reference, wrapped by accelerate, and checkpointing."""
        config, total = self.config, self.progress.total_steps
        optimizer = torch.optim.AdamW(
            [p for p in module.parameters() if p.requires_grad],
            lr=config.learning_rate,
            betas=config.betas,
            eps=config.eps,
            weight_decay=config.weight_decay,
        )
        warmup = config.warmup_steps(total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, warmup, total, config.warmup_shape)
        )
        # load_pandagpt already placed the model (and quantized weights must not be moved).
        self.module, self.optimizer = self.accelerator.prepare(
            module, optimizer, device_placement=[False, False]
        )
        # After prepare: FSDP2 replaces parameters with sharded ones.
        self.trainable = [p for p in self.module.parameters() if p.requires_grad]
        self.accelerator.register_for_checkpointing(self.scheduler)
        self.checkpointer = Checkpointer(
            self.accelerator, self.module, self.output_dir, config.keep_checkpoints
        )

    @property
    def step(self) -> int:
        return self.progress.step

    def resume(self, resume: str = "auto") -> None:
        """``"auto"``: continue from the latest checkpoint of ``output_dir``, if any;
        ``"never"``: refuse an ``output_dir`` with checkpoints; else a checkpoint path."""
        existing = list_checkpoints(self.output_dir)
        if resume == "never":
            if existing:
                raise CheckpointError(
                    f"{self.output_dir} already has checkpoints; resume or use a new output_dir"
                )
            return
        start = Path(resume) if resume != "auto" else (existing[-1] if existing else None)
        if start is not None:
            self.progress = self.checkpointer.load(start, self.progress)
            self.resumed_from = start
            self.accelerator.print(f"resumed from {start} at step {self.step}")

    def _loader(self, end: int) -> DataLoader[PromptLayout]:
        """This process's micro-batches from the current step to ``end`` or the epoch's end."""
        epoch, first = divmod(self.step, self.steps_per_epoch)
        config = self.config
        indices = rank_indices(
            epoch_order(len(self.dataset), config.seed, epoch),
            range(first, min(self.steps_per_epoch, first + end - self.step)),
            config.global_batch_size,
            self.accelerator.process_index,
            self.accelerator.num_processes,
        )
        return DataLoader(
            Subset(self.dataset, indices),
            batch_size=config.micro_batch_size,
            collate_fn=partial(collate, pad_token_id=self.pad_id),
            num_workers=config.num_workers,
            generator=torch.Generator(),  # keeps the DataLoader off the global RNG (dropout's)
        )

    def run(self, stop_after: int | None = None) -> TrainResult:
        """Trains to the end, or checkpoints and returns after step ``stop_after`` (a planned
        interruption: the schedule still spans the whole run)."""
        accelerator, config = self.accelerator, self.config
        total = self.progress.total_steps
        end = total if stop_after is None else min(total, stop_after)
        metrics_path = self.output_dir / METRICS
        with writing(self.output_dir, *OUTPUT_FIX):
            if accelerator.is_main_process:
                self.output_dir.mkdir(parents=True, exist_ok=True)
                truncate_metrics(metrics_path, self.step)
            accelerator.init_trackers("pandagpt", config=_hparams(config))
        bar = tqdm(
            total=total,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not accelerator.is_main_process,
        )
        self.module.train()
        try:
            saved, last_loss = self._steps(end, bar, metrics_path, self.resumed_from)
        finally:
            bar.close()  # an error message then starts on a line of its own
        with writing(self.output_dir, *OUTPUT_FIX):
            accelerator.end_training()
        return TrainResult(self.step, total, saved, last_loss)

    def _steps(
        self, end: int, bar: tqdm, metrics_path: Path, saved: Path | None
    ) -> tuple[Path | None, float | None]:
        """Optimizer steps up to ``end``, logging and checkpointing as configured; returns the
        last checkpoint and loss."""
        accelerator, config = self.accelerator, self.config
        window, last_loss = _Window(), None
        while self.step < end:
            group: list[Batch] = []
            for batch in self._loader(end):
                group.append(batch)
                if len(group) < accelerator.gradient_accumulation_steps:
                    continue
                last_loss = self._optimizer_step(group, window)
                group = []
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.4f}")
                if self.step % config.log_every == 0 or self.step == end:
                    metrics = window.metrics(accelerator, float(self.scheduler.get_last_lr()[0]))
                    metrics["epoch"] = self.step / self.steps_per_epoch
                    with writing(metrics_path, *OUTPUT_FIX):
                        accelerator.log(metrics, step=self.step)
                        if accelerator.is_main_process:
                            append_metrics(metrics_path, {"step": self.step, **metrics})
                    window = _Window()
                every = config.checkpoint_every
                if self.step == end or (every and self.step % every == 0):
                    saved = self.checkpointer.save(self.progress)
        return saved, last_loss

    def _optimizer_step(self, micro_batches: list[Batch], window: _Window) -> float:
        """One optimizer step over this process's micro-batches; returns the step's loss (the
        mean of all micro-batch losses of all processes)."""
        accelerator = self.accelerator
        losses = []
        for batch in micro_batches:
            with accelerator.accumulate(self.module):
                loss, tokens, correct = self.module(batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    window.grad_norm = accelerator.clip_grad_norm_(
                        self.trainable, self.config.max_grad_norm
                    )
                self.optimizer.step()
                self.optimizer.zero_grad()
            losses.append(loss.item())
            window.add(tokens, correct, len(batch.input_ids))
        if not self.optimizer.step_was_skipped:  # fp16 overflow: the schedule waits too
            self.scheduler.step()
        self.progress = replace(self.progress, step=self.step + 1)
        mean = torch.tensor(sum(losses) / len(losses), device=accelerator.device)
        step_loss = float(accelerator.reduce(mean, "mean").item())
        window.losses.append(step_loss)
        return step_loss


class _Window:
    """Sums over the optimizer steps since the last log line."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.counts = [0, 0, 0]  # labelled tokens, correct predictions, samples
        self.grad_norm: torch.Tensor | None = None
        self.start = time.perf_counter()

    def add(self, tokens: int, correct: int, samples: int) -> None:
        self.counts = [a + b for a, b in zip(self.counts, (tokens, correct, samples), strict=True)]

    def metrics(self, accelerator: Accelerator, lr: float) -> dict[str, float]:
        tokens, correct, samples = accelerator.reduce(
            torch.tensor(self.counts, device=accelerator.device), "sum"
        ).tolist()
        return {
            "loss": sum(self.losses) / len(self.losses),
            "lr": lr,
            "grad_norm": math.nan if self.grad_norm is None else float(self.grad_norm),
            "token_accuracy": correct / max(tokens, 1),
            "samples_per_s": samples / (time.perf_counter() - self.start),
        }


def train(
    config: TrainConfig, *, resume: str = "auto", stop_after: int | None = None
) -> TrainResult:
    """Builds a :class:`Trainer`, resumes it as asked (see :meth:`Trainer.resume`) and runs it."""
    trainer = Trainer(config)
    trainer.resume(resume)
    return trainer.run(stop_after)
