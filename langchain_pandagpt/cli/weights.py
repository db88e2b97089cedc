"""Commands that make, fetch and convert weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from langchain_pandagpt.cli.common import app, hide_loading_bars, print_error, stdout, user_errors


@app.command("create-tiny-checkpoint")
def create_tiny_checkpoint_command(
    directory: Annotated[Path, typer.Argument(help="Where to write the bundle.")],
    seed: Annotated[
        int, typer.Option(help="Random seed; the same seed gives identical files.")
    ] = 0,
    peft: Annotated[
        bool, typer.Option("--peft", help="Write the adapter in PEFT form, not pytorch_model.pt.")
    ] = False,
) -> None:
    """Write a tiny random PandaGPT bundle (seconds, offline) for tests and demos."""
    hide_loading_bars()
    from langchain_pandagpt.model.tiny import create_tiny_checkpoint

    with user_errors():
        path = create_tiny_checkpoint(
            directory, seed, adapter_format="peft" if peft else "reference"
        )
    stdout.print(f"tiny bundle written to {path}", highlight=False)


@app.command("convert-checkpoint")
def convert_checkpoint_command(
    checkpoint: Annotated[Path, typer.Argument(help="A released PandaGPT pytorch_model.pt.")],
    out_dir: Annotated[Path, typer.Argument(help="Directory for the PEFT adapter.")],
) -> None:
    """Convert a released [bold]pytorch_model.pt[/] into a PEFT adapter + projection.safetensors."""
    from langchain_pandagpt.model.adapter import convert_reference_checkpoint

    with user_errors():
        path = convert_reference_checkpoint(checkpoint, out_dir)
    stdout.print(f"PEFT adapter written to {path}", highlight=False)


@app.command("convert-imagebind")
def convert_imagebind_command(
    source: Annotated[Path, typer.Argument(help="The official imagebind_huge.pth (or similar).")],
    destination: Annotated[Path, typer.Argument(help="The .safetensors file to write.")],
    config: Annotated[
        Path | None,
        typer.Option(help="JSON file of ImageBindConfig fields (default: imagebind_huge)."),
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

    with user_errors():
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
) -> None:
    """Download weights (resumable, checksummed): ImageBind, PandaGPT deltas, LLMs.

    ImageBind comes from Meta's URL, deltas and LLMs from the Hugging Face Hub. Interrupted
    downloads resume when run again.

    The weights are for non-commercial research (ImageBind and the deltas: CC-BY-NC-SA 4.0;
    LLaMA-1/Vicuna: Meta's research license).
    """
    from langchain_pandagpt.model.hub import download as fetch
    from langchain_pandagpt.model.hub import known_downloads

    if list_names or name is None:
        for short, source in known_downloads().items():
            stdout.print(f"{short:18} {source}", highlight=False)
        if name is None and not list_names:
            stdout.print("\nor any Hugging Face repo id: pandagpt download owner/name")
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
