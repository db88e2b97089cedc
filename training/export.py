"""Export: a training checkpoint as a new bundle that ``ChatPandaGPT`` and ``load_pandagpt`` load.

The new bundle keeps the base bundle's settings (BOS id, embedding scales, context length), the
prompt settings training used, and points at (or, with ``copy_base``, copies) the base LLM and
ImageBind; the trained weights go in as a PEFT adapter plus ``projection.safetensors``. With
``reference`` the same weights are also written as the released ``pytorch_model.pt`` layout,
loadable by the reference code.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from langchain_pandagpt.errors import CheckpointError
from langchain_pandagpt.model.adapter import (
    PROJECTION_NAME,
    read_peft_adapter,
    write_peft_adapter,
    write_reference_checkpoint,
)
from langchain_pandagpt.model.manifest import AdapterSpec, BundleManifest, manifest_path
from training.atomic import TMP_SUFFIX, publish
from training.checkpoints import ADAPTER, list_checkpoints
from training.config import TrainConfig

REFERENCE_NAME = "pytorch_model.pt"


def _base_part(value: str, root: Path, copy_to: Path | None) -> str:
    """A manifest path of the base bundle as seen from the new one: absolute, or copied in.

    Hub ids and ``"official"`` (the user-cache ImageBind) name no local path: they stay as they are.
    """
    source = root / Path(value).expanduser()
    if not source.exists():
        return value
    if copy_to is None:
        return str(source.resolve())
    if source.is_dir():
        shutil.copytree(source, copy_to)
    else:
        shutil.copy2(source, copy_to)
    return copy_to.name


def export_bundle(
    config: TrainConfig,
    output: str | Path,
    *,
    checkpoint: str | Path | None = None,
    reference: bool = False,
    copy_base: bool = False,
    name: str | None = None,
) -> Path:
    """Writes the bundle of ``checkpoint`` (default: the run's latest) to ``output``, atomically."""
    if checkpoint is None:
        found = list_checkpoints(Path(config.output_dir))
        if not found:
            raise CheckpointError(f"{config.output_dir}: no checkpoint to export; train first")
        checkpoint = found[-1]
    source = Path(checkpoint)
    weights = read_peft_adapter(source / ADAPTER)
    base_file = manifest_path(config.bundle)
    base = BundleManifest.read(base_file)

    final = Path(output)
    tmp = final.with_name(final.name + TMP_SUFFIX)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    root = base_file.parent
    imagebind_copy = tmp / Path(base.imagebind).name if copy_base else None
    write_peft_adapter(weights, tmp / ADAPTER, tmp / PROJECTION_NAME)
    adapter = AdapterSpec(
        format="peft", path=ADAPTER, projection=PROJECTION_NAME, vocab_size=base.adapter.vocab_size
    )
    changes = {
        "name": name or f"{base.name}-{source.name}",
        "llm": _base_part(base.llm, root, tmp / "llm" if copy_base else None),
        "imagebind": _base_part(base.imagebind, root, imagebind_copy),
        "adapter": adapter.model_dump(),
        "fidelity": config.prompt.fidelity or base.fidelity,
        "media_fusion": config.prompt.media_fusion or base.media_fusion,
    }
    manifest = BundleManifest.from_mapping({**base.to_dict(), **changes}, str(tmp))
    manifest.write(tmp)
    if reference:
        write_reference_checkpoint(weights, tmp / REFERENCE_NAME, source=str(source))
    return publish(tmp, final)
