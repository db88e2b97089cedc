"""Export: a training checkpoint as a new bundle that ``ChatPandaGPT`` and ``load_pandagpt`` load.

The new bundle keeps the base bundle's settings (BOS id, embedding scales, context length), the
prompt settings training used, and points at (or, with ``copy_base``, copies) the base LLM and
ImageBind; the trained weights go in as a PEFT adapter plus ``projection.safetensors``. With
``reference`` the same weights are also written as the released ``pytorch_model.pt`` layout,
loadable by the reference code.

The new bundle is written beside ``output`` and swapped in atomically (see
:func:`training.atomic.publish`): a server or a user loading the old bundle at ``output``
sees it complete until the new one is complete and in its place, whatever happens meanwhile.
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
from training.atomic import TMP_SUFFIX, publish, recover, writing
from training.checkpoints import ADAPTER, list_checkpoints
from training.config import TrainConfig

REFERENCE_NAME = "pytorch_model.pt"
_OUTPUT_FIX = ("the bundle", "--output DIR")


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
    base_file = manifest_path(config.bundle)
    base = BundleManifest.read(base_file)

    final = Path(output)
    recover(final)
    _check_replaceable(final, base_file.parent)
    tmp = final.with_name(final.name + TMP_SUFFIX)
    try:
        with writing(tmp, *_OUTPUT_FIX):
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            _write_bundle(tmp, config, source, base, base_file.parent, reference, copy_base, name)
            return publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the old bundle stays; free the space
        raise


def _check_replaceable(final: Path, base: Path) -> None:
    """Only an exported bundle (or an empty folder) is replaced: never the base bundle the
    new one points at, nor someone's other files."""
    problem = None
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        problem = "exists and is not a bundle folder"
    elif final.exists() and final.resolve() == base.resolve():
        problem = "is the base bundle, which the new one needs"
    elif final.is_dir() and any(final.iterdir()) and not manifest_path(final).is_file():
        problem = "is a non-empty folder but not a bundle (no pandagpt.json), so it is kept"
    if problem:
        raise CheckpointError(f"{final}: {problem}; choose another --output")


def _write_bundle(
    tmp: Path,
    config: TrainConfig,
    source: Path,
    base: BundleManifest,
    root: Path,
    reference: bool,
    copy_base: bool,
    name: str | None,
) -> None:
    """Writes the complete new bundle into the empty folder ``tmp``."""
    weights = read_peft_adapter(source / ADAPTER)
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
