"""Training checkpoints: atomic, small, and exact to resume from.

``<output_dir>/checkpoints/step-00000100/`` holds

* accelerate's state: optimizer, LR scheduler, gradient scaler, accelerate's step counter and
  the RNG states of every process (so LoRA dropout continues with the same random numbers);
* ``adapter/``: the trainable weights (LoRA + projection, fp32) in the bundle's PEFT form,
  which is also what ``python -m training export`` reads;
* ``progress.json``: the optimizer step, plus the facts the data order depends on.

Frozen weights are never written (accelerate would otherwise save the whole LLM each time).
The directory is written as ``step-….tmp`` and renamed only once complete and on disk, so a
crash at any moment leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from langchain_pandagpt.errors import CheckpointError
from langchain_pandagpt.model.adapter import read_peft_adapter, write_peft_adapter
from training.atomic import TMP_SUFFIX, discard, publish, remove_stale, writing
from training.model import PandaGPTForTraining, adapter_weights, load_adapter_weights

CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
PROGRESS = "progress.json"
_STEP_DIR = re.compile(r"step-(\d+)")
#: How to make a run write elsewhere, for storage errors (see :func:`training.atomic.writing`).
OUTPUT_FIX = ("output_dir", "--set output_dir=DIR")


@dataclass(frozen=True)
class Progress:
    """Where a run is: ``step`` optimizer steps done, out of ``total_steps``.

    The other fields fix the data order; resuming with different values would silently feed
    other samples, so it is refused.
    """

    step: int
    total_steps: int
    num_samples: int
    global_batch_size: int
    seed: int

    def check_resumable(self, saved: Progress, path: Path) -> None:
        ours, theirs = asdict(self), asdict(saved)
        changed = [
            f"{key} {theirs[key]} -> {ours[key]}"
            for key in ours
            if key != "step" and ours[key] != theirs[key]
        ]
        if changed:
            raise CheckpointError(
                f"{path}: cannot resume, the run changed ({', '.join(changed)}); "
                "use a new output_dir or restore the settings"
            )


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = output_dir / CHECKPOINTS
    found = [
        (int(match.group(1)), path)
        for path in root.glob("step-*")
        if (match := _STEP_DIR.fullmatch(path.name)) and path.is_dir()
    ]
    return [path for _, path in sorted(found)]


class Checkpointer:
    """Saves and restores checkpoints of one run (call both on every process)."""

    def __init__(
        self, accelerator: Accelerator, module: torch.nn.Module, output_dir: Path, keep: int
    ):
        self.accelerator = accelerator
        self.module = module
        self.root = output_dir / CHECKPOINTS
        self.keep = keep
        kind = accelerator.distributed_type
        self.deepspeed = kind == DistributedType.DEEPSPEED
        # Plain and DDP runs: keep accelerate away from the model weights, adapter/ has them.
        # DeepSpeed and FSDP save their own (sharded) model and optimizer state.
        self.plain = kind not in (DistributedType.DEEPSPEED, DistributedType.FSDP)
        if self.plain:
            accelerator.register_save_state_pre_hook(lambda models, weights, _dir: weights.clear())
            accelerator.register_load_state_pre_hook(lambda models, _dir: models.clear())
        if accelerator.is_main_process:
            with writing(self.root, *OUTPUT_FIX):
                self.root.mkdir(parents=True, exist_ok=True)
                remove_stale(self.root)
        accelerator.wait_for_everyone()

    def _unwrapped(self) -> PandaGPTForTraining:
        module = self.accelerator.unwrap_model(self.module)
        assert isinstance(module, PandaGPTForTraining)
        return module

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        if self.accelerator.distributed_type == DistributedType.FSDP:  # gathers the shards
            return self.accelerator.get_state_dict(self.module)
        return {n: p for n, p in self._unwrapped().named_parameters() if p.requires_grad}

    def save(self, progress: Progress) -> Path:
        """Writes the checkpoint of ``progress``; a failed write (disk full, permissions)
        raises :class:`~training.atomic.StorageError` and leaves no partial checkpoint."""
        final = self.root / f"step-{progress.step:08d}"
        tmp = final.with_name(final.name + TMP_SUFFIX)
        kwargs = {"exclude_frozen_parameters": True} if self.deepspeed else {}
        try:
            with writing(tmp, *OUTPUT_FIX):
                self.accelerator.save_state(str(tmp), **kwargs)
                state = self._trainable_state()
                if self.accelerator.is_main_process:
                    write_peft_adapter(adapter_weights(self._unwrapped(), state), tmp / ADAPTER)
                    (tmp / PROGRESS).write_text(json.dumps(asdict(progress), indent=2) + "\n")
                self.accelerator.wait_for_everyone()
                if self.accelerator.is_main_process:
                    publish(tmp, final)
                    for old in list_checkpoints(self.root.parent)[: -self.keep]:
                        discard(old)
        except BaseException:
            if self.accelerator.is_main_process:  # give the space back for the next try
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.accelerator.wait_for_everyone()
        return final

    def load(self, path: Path, expected: Progress) -> Progress:
        """Restores a checkpoint saved by :meth:`save`; returns its progress."""
        saved = Progress(**json.loads((path / PROGRESS).read_text()))
        expected.check_resumable(saved, path)
        kwargs = {"load_module_strict": False} if self.deepspeed else {}
        self.accelerator.load_state(str(path), **kwargs)
        if self.plain:
            load_adapter_weights(self._unwrapped(), read_peft_adapter(path / ADAPTER))
        return saved
