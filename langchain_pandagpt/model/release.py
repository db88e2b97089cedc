"""A released PandaGPT as a ready bundle: ``pandagpt download pandagpt-7b --llama BASE --dest DIR``.

The released adapters only fit Vicuna **v0**, which lmsys published only as a delta over
LLaMA-1. LLaMA-1 is under Meta's non-commercial licence, so the user names their own copy
(``llama``: a folder or Hub id) and the v0 delta is applied to it here
(:func:`langchain_pandagpt.model.delta.apply_delta`); or they name a Vicuna v0 they already
have (``llm``). Every step can be run again: downloads resume or are skipped, the applied LLM
only appears once complete, and ``pandagpt.json`` is written last, so a bundle with a manifest
is a finished one.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from langchain_pandagpt.downloads import cache_dir
from langchain_pandagpt.errors import CheckpointError
from langchain_pandagpt.model import hub
from langchain_pandagpt.model.delta import (
    apply_delta,
    is_applied,
    llama2_markers,
    resolve_model_folder,
)
from langchain_pandagpt.model.manifest import (
    OFFICIAL_IMAGEBIND,
    AdapterSpec,
    BundleManifest,
    manifest_path,
)

logger = logging.getLogger(__name__)

#: lmsys' Vicuna v0 deltas over LLaMA-1, by model size.
VICUNA_V0_DELTAS: Final = {
    "7b": "lmsys/vicuna-7b-delta-v0",
    "13b": "lmsys/vicuna-13b-delta-v0",
}
VICUNA_V0_VOCAB: Final = 32001
LLM_FOLDER: Final = "llm"


@dataclass(frozen=True)
class Release:
    """One released PandaGPT: its adapter repo, the Vicuna v0 it needs, that LLM's shape."""

    name: str
    adapter_repo: str
    vicuna_delta: str
    hidden_size: int
    vocab_size: int = VICUNA_V0_VOCAB


def _release(name: str, repo: str) -> Release:
    size = "13b" if "13b" in name else "7b"
    return Release(name, repo, VICUNA_V0_DELTAS[size], 5120 if size == "13b" else 4096)


#: Every release ``pandagpt download --list`` shows, by short name.
RELEASES: Final[dict[str, Release]] = {
    name: _release(name, repo) for name, repo in hub.PANDAGPT_DELTAS.items()
}


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: no readable config.json ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{folder / 'config.json'}: the config must be a JSON object")
    return config


def check_vicuna_v0(folder: Path, release: Release) -> None:
    """Refuses an LLM folder that is not the Vicuna v0 ``release`` was trained on."""
    config = _read_config(folder)
    vocab, hidden = config.get("vocab_size"), config.get("hidden_size")
    problems = [f"later LLaMA: {marker}" for marker in llama2_markers(config)]
    if vocab != release.vocab_size:
        problems.append(f"vocabulary {vocab}, Vicuna v0 has {release.vocab_size}")
    if hidden != release.hidden_size:
        problems.append(f"hidden size {hidden}, {release.name} needs {release.hidden_size}")
    if problems:
        raise CheckpointError(
            f"{folder} is not the Vicuna v0 {release.name} needs ({'; '.join(problems)}); "
            f"build it with --llama LLAMA1 (applies {release.vicuna_delta})"
        )


def _check_llama_early(llama: str, release: Release) -> None:
    """A local LLaMA-1 folder of the wrong kind or size is refused before any download."""
    folder = Path(llama).expanduser()
    if not folder.is_dir():
        return
    config = _read_config(folder)
    markers = llama2_markers(config)
    if markers:
        raise CheckpointError(f"--llama {folder} is not LLaMA-1 ({'; '.join(markers)})")
    if config.get("hidden_size") != release.hidden_size:
        raise CheckpointError(
            f"--llama {folder} has hidden size {config.get('hidden_size')}; {release.name} "
            f"needs the LLaMA-1 with {release.hidden_size}"
        )


def _imagebind_reference(path: Path) -> str:
    """``"official"`` for the user-cache copy (it then follows a later conversion to
    safetensors), else the file's absolute path."""
    if path.parent.resolve() == cache_dir(hub.IMAGEBIND).resolve():
        return OFFICIAL_IMAGEBIND
    return str(path.resolve())


def build_release_bundle(
    name: str,
    dest: str | os.PathLike[str],
    *,
    llama: str | None = None,
    llm: str | None = None,
    verify: bool = True,
    progress: bool = True,
) -> Path:
    """Writes the complete bundle of release ``name`` into ``dest`` and returns ``dest``.

    ``llama``: LLaMA-1 (folder or Hub id); Vicuna v0 is built from it into ``dest/llm``.
    ``llm``: an existing Vicuna v0 instead (folder or Hub id). Exactly one is needed.
    """
    release = RELEASES.get(name)
    if release is None:
        raise ValueError(f"unknown release {name!r}; use one of {', '.join(RELEASES)}")
    if (llama is None) == (llm is None):
        raise ValueError(
            "name exactly one LLM: --llama LLAMA1 (a folder or Hub id of Meta's LLaMA-1, from "
            f"which Vicuna v0 is built) or --llm VICUNA_V0 (an existing Vicuna v0, vocab "
            f"{release.vocab_size})"
        )
    root = Path(dest).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    llm_reference = LLM_FOLDER
    if llm is not None:
        local = Path(llm).expanduser()
        if local.is_dir():
            check_vicuna_v0(local, release)
            llm_reference = str(local.resolve())
        else:
            llm_reference = llm  # a Hub id, fetched when the bundle is loaded with downloads on
    else:
        assert llama is not None
        _check_llama_early(llama, release)

    logger.info("%s: fetching the adapter %s", name, release.adapter_repo)
    adapter = hub.download(name, destination=root, verify=verify).path
    if llama is not None:
        target = root / LLM_FOLDER
        if is_applied(target):
            logger.info("%s: %s is already built, skipping apply-delta", name, target)
        else:
            base = resolve_model_folder(llama, role="BASE", allow_download=True)
            delta = hub.download_llm(release.vicuna_delta, verify=verify).path
            apply_delta(base, delta, target, progress=progress)
        check_vicuna_v0(target, release)
    logger.info("%s: fetching ImageBind", name)
    imagebind = hub.download_imagebind(progress=progress).path

    adapter_path = adapter.name if adapter.parent.resolve() == root.resolve() else str(adapter)
    manifest = BundleManifest(
        name=name,
        llm=llm_reference,
        imagebind=_imagebind_reference(imagebind),
        adapter=AdapterSpec(format="reference", path=adapter_path, vocab_size=release.vocab_size),
    )
    manifest.write(root)
    logger.info("%s: bundle ready at %s", name, manifest_path(root))
    return root
