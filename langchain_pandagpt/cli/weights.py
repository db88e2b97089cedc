"""Commands that make, fetch and convert weights."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from langchain_pandagpt.cli.common import app, print_error, regular_files, stdout, user_errors


@app.command("create-tiny-checkpoint")
def create_tiny_checkpoint_command(
    directory: Annotated[Path, typer.Argument(help="Where to write the bundle.")],
    seed: Annotated[
        int, typer.Option(help="Random seed; the same seed gives identical files.")
    ] = 0,
    peft: Annotated[
        bool, typer.Option("--peft", help="Write the adapter in PEFT form, not pytorch_model.pt.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace the bundle already in DIRECTORY (all of it)."),
    ] = False,
) -> None:
    """Write a tiny random PandaGPT bundle (seconds, offline) for tests and demos.

    DIRECTORY must be new or empty; [bold]--force[/] replaces an earlier bundle there as a
    whole (nothing of the old one is left beside the new one).
    """
    with user_errors():
        replace = _check_target(directory, force)
    from langchain_pandagpt.model.tiny import create_tiny_checkpoint

    with user_errors():
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            create_tiny_checkpoint(staging, seed, adapter_format="peft" if peft else "reference")
            _swap_in(staging, directory, replace)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    stdout.print(f"tiny bundle written to {directory}", highlight=False)


def _check_target(directory: Path, force: bool) -> bool:
    """Whether an existing bundle is to be replaced; refuses anything else that is there."""
    if not directory.exists():
        return False
    if not directory.is_dir():
        raise ValueError(f"{directory} exists and is not a folder; choose a folder name")
    if not any(directory.iterdir()):
        return False
    if not force:
        raise ValueError(
            f"{directory} is not empty; choose a new or empty folder, or pass --force to "
            "replace the bundle in it"
        )
    if not (directory / "pandagpt.json").is_file():
        raise ValueError(
            f"{directory} is not empty and holds no bundle (no pandagpt.json); --force only "
            "replaces a bundle, so choose another folder or empty this one yourself"
        )
    return True


def _swap_in(staging: Path, directory: Path, replace: bool) -> None:
    """Moves the finished bundle into place: a rename, so a killed run never leaves half of
    one; a replaced bundle goes as a whole."""
    if not replace:
        if directory.exists():
            directory.rmdir()  # empty, checked before
        os.replace(staging, directory)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
    os.replace(directory, old / "bundle")
    try:
        os.replace(staging, directory)
    except OSError:
        os.replace(old / "bundle", directory)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


@app.command("convert-checkpoint")
def convert_checkpoint_command(
    checkpoint: Annotated[
        Path,
        typer.Argument(callback=regular_files, help="A released PandaGPT pytorch_model.pt."),
    ],
    out_dir: Annotated[Path, typer.Argument(help="Directory for the PEFT adapter.")],
) -> None:
    """Convert a released [bold]pytorch_model.pt[/] into a PEFT adapter + projection.safetensors."""
    from langchain_pandagpt.model.adapter import convert_reference_checkpoint

    with user_errors():
        path = convert_reference_checkpoint(checkpoint, out_dir)
    stdout.print(f"PEFT adapter written to {path}", highlight=False)


@app.command("convert-imagebind")
def convert_imagebind_command(
    source: Annotated[
        Path,
        typer.Argument(
            callback=regular_files, help="The official imagebind_huge.pth (or similar)."
        ),
    ],
    destination: Annotated[Path, typer.Argument(help="The .safetensors file to write.")],
    config: Annotated[
        Path | None,
        typer.Option(
            callback=regular_files,
            help="JSON file of ImageBindConfig fields (default: imagebind_huge).",
        ),
    ] = None,
) -> None:
    """Convert an ImageBind checkpoint to pickle-free safetensors (faster, safer loading)."""
    from langchain_pandagpt.imagebind.checkpoint import convert_imagebind_checkpoint
    from langchain_pandagpt.imagebind.model import ImageBindConfig

    with user_errors():
        model_config = None
        if config is not None:
            try:
                model_config = ImageBindConfig.from_dict(json.loads(config.read_text()))
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"{config}: not a readable JSON config ({exc})") from exc
        path = convert_imagebind_checkpoint(source, destination, config=model_config)
    stdout.print(f"ImageBind written to {path}", highlight=False)


@app.command("apply-delta")
def apply_delta_command(
    base: Annotated[
        str, typer.Argument(help="LLaMA-1 in Hugging Face format: a folder or a Hub repo id.")
    ],
    delta: Annotated[
        str,
        typer.Argument(help="The Vicuna v0 delta: lmsys/vicuna-7b-delta-v0, -13b-, or a folder."),
    ],
    out: Annotated[Path, typer.Argument(help="Folder to write Vicuna v0 into.")],
    offline: Annotated[
        bool,
        typer.Option(help="Use only local folders and the Hugging Face cache; never download."),
    ] = False,
    force: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    max_shard_mb: Annotated[
        int, typer.Option("--max-shard-mb", min=1, help="Largest output shard, in MiB.")
    ] = 1024,
) -> None:
    """Build Vicuna v0 (vocabulary 32001) from LLaMA-1 and lmsys' v0 delta, as FastChat 0.1.10
    did, shard by shard (memory near one shard, not the model); OUT appears only when complete.

    LLaMA-1 is under Meta's non-commercial licence: name your own copy.
    """
    if out.exists() and not force:
        print_error(f"{out} already exists; pass --force to replace it")
        raise typer.Exit(code=1)
    from langchain_pandagpt.model.delta import apply_delta

    with user_errors(), _steps_logged():
        path = apply_delta(
            base,
            delta,
            out,
            allow_download=not offline,
            max_shard_bytes=max_shard_mb << 20,
            overwrite=force,
        )
    stdout.print(f"Vicuna v0 written to {path}", highlight=False)


@app.command()
def download(
    name: Annotated[
        str | None,
        typer.Argument(
            help="imagebind, a released delta (pandagpt-7b, pandagpt-13b, ...) or any Hugging "
            "Face repo id (owner/name), e.g. an HF-format Vicuna."
        ),
    ] = None,
    dest: Annotated[
        Path | None,
        typer.Option(help="Target file or folder (default: the Hugging Face / PandaGPT cache)."),
    ] = None,
    file: Annotated[
        list[str] | None, typer.Option("--file", help="Only this file of the repo (repeatable).")
    ] = None,
    include: Annotated[
        list[str] | None,
        typer.Option(help="Only files matching this glob, e.g. '*.safetensors' (repeatable)."),
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit.")] = None,
    url: Annotated[str | None, typer.Option(help="Mirror URL for imagebind.")] = None,
    sha256: Annotated[
        str | None, typer.Option(help="Expected SHA-256 of imagebind_huge.pth.")
    ] = None,
    verify: Annotated[
        bool, typer.Option(help="Check Hub files against the Hub's checksums.")
    ] = True,
    force: Annotated[bool, typer.Option(help="Download again even if cached.")] = False,
    list_names: Annotated[
        bool, typer.Option("--list", help="List the short names and exit.")
    ] = False,
    llama: Annotated[
        str | None,
        typer.Option(
            help="With a release: your LLaMA-1 (folder or Hub id); Vicuna v0 is built from it "
            "and a complete bundle written to --dest."
        ),
    ] = None,
    llm: Annotated[
        str | None,
        typer.Option(help="With a release: an existing Vicuna v0 (folder or Hub id) instead."),
    ] = None,
) -> None:
    """Download weights (resumable, checksummed): ImageBind, PandaGPT deltas, LLMs.

    ImageBind comes from Meta's URL, deltas and LLMs from the Hugging Face Hub. Interrupted
    downloads resume when run again.

    [bold]pandagpt download pandagpt-7b --llama LLAMA1 --dest DIR[/] writes a complete bundle:
    ImageBind, the adapter, and Vicuna v0 built from your LLaMA-1 and lmsys' v0 delta (or
    [bold]--llm VICUNA_V0[/] for one you have); run it again to resume.

    The weights are for non-commercial research (ImageBind and the deltas: CC-BY-NC-SA 4.0;
    LLaMA-1/Vicuna: Meta's research license).
    """
    from langchain_pandagpt.model.hub import PANDAGPT_DELTAS, known_downloads
    from langchain_pandagpt.model.hub import download as fetch

    if list_names or name is None:
        for short, source in known_downloads().items():
            stdout.print(f"{short:18} {source}", highlight=False)
        if name is None and not list_names:
            stdout.print("\nor any Hugging Face repo id: pandagpt download owner/name")
        return
    if llama is not None or llm is not None:
        _download_bundle(name, dest, llama=llama, llm=llm, verify=verify)
        return
    with user_errors():
        result = fetch(
            name,
            destination=dest,
            filenames=tuple(file or ()),
            include=tuple(include or ()),
            revision=revision,
            url=url,
            sha256=sha256,
            verify=verify,
            force=force,
        )
    stdout.print(f"{name} -> {result.path}", highlight=False)
    if name in PANDAGPT_DELTAS:
        stdout.print(
            f"for a complete bundle: pandagpt download {name} --llama LLAMA1 --dest DIR "
            "(or --llm VICUNA_V0)",
            highlight=False,
        )
    if result.verified:
        stdout.print(f"checksums verified for {len(result.files)} file(s)", highlight=False)
    if name == "imagebind":
        from langchain_pandagpt.downloads import sha256_of

        stdout.print(f"sha256 {sha256_of(result.path)}", highlight=False)
        stdout.print(
            "convert it once for faster, pickle-free loading: "
            f"pandagpt convert-imagebind {result.path} imagebind_huge.safetensors",
            highlight=False,
        )


def _download_bundle(
    name: str, dest: Path | None, *, llama: str | None, llm: str | None, verify: bool
) -> None:
    """``download RELEASE --llama/--llm ... --dest DIR``: a complete, ready bundle."""
    from langchain_pandagpt.model.hub import PANDAGPT_DELTAS

    if name not in PANDAGPT_DELTAS:
        print_error(f"--llama/--llm need a release ({', '.join(PANDAGPT_DELTAS)}), not {name!r}")
        raise typer.Exit(code=1)
    if dest is None:
        print_error("pass --dest DIR: the folder the bundle is written to")
        raise typer.Exit(code=1)
    from langchain_pandagpt.model.release import build_release_bundle

    with user_errors(), _steps_logged():
        path = build_release_bundle(name, dest, llama=llama, llm=llm, verify=verify)
    stdout.print(f"bundle ready: {path}", highlight=False)
    stdout.print(f'try it: pandagpt ask -b {path} --image cat.jpg "What is this?"', highlight=False)


@contextmanager
def _steps_logged() -> Iterator[None]:
    """Long weight jobs log their steps (model layer, INFO) to stderr while they run."""
    logger = logging.getLogger("langchain_pandagpt.model")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
