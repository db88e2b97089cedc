"""What every ``pandagpt`` command shares: the app, consoles, user-error handling, options.

transformers, peft and the models are imported inside the commands, so ``pandagpt --help`` and
``pandagpt download`` start quickly. Nothing printed on stdout is read as rich markup, so file
names and model output print as they are.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.console import Console
from rich.markup import escape

from langchain_pandagpt.conversation import MediaItem
from langchain_pandagpt.errors import PandaGPTError

if TYPE_CHECKING:
    from langchain_pandagpt.embeddings import ImageBindEmbeddings
    from langchain_pandagpt.generation.engine import GenerationEngine, SamplingParams

app = typer.Typer(
    name="pandagpt",
    help="PandaGPT (ImageBind + Vicuna): chat about images, audio, video, thermal, depth and "
    "IMU data; embed and search media; serve an OpenAI-compatible API; manage weights.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
stdout = Console(markup=False, highlight=False)
stderr = Console(stderr=True, highlight=False)


def print_error(message: str) -> None:
    stderr.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turns expected errors (bad bundle, bad media, bad input, I/O) into one red line and exit
    status 1, and Ctrl-C into status 130; anything else is a bug and keeps its traceback."""
    try:
        yield
    except (PandaGPTError, ValueError, OSError) as exc:
        print_error(str(exc))
        raise typer.Exit(code=1) from None
    except KeyboardInterrupt:
        raise typer.Exit(code=130) from None


@app.callback()
def _quiet_libraries() -> None:
    """Keeps library chatter (optional-kernel notices, deprecation warnings, info logs) out of
    the output; runs before every command."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def hide_loading_bars() -> None:
    """No "Loading weights" bars from transformers (download bars stay)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


# -- options ---------------------------------------------------------------------------------

BundleOption = Annotated[
    Path,
    typer.Option(
        "--bundle",
        "-b",
        envvar="PANDAGPT_BUNDLE",
        help="PandaGPT bundle directory (or its pandagpt.json) [env: PANDAGPT_BUNDLE].",
        show_envvar=False,
    ),
]
PrecisionOption = Annotated[
    str,
    typer.Option(help="auto (fp16 on GPU, fp32 on CPU), fp32, fp16, bf16, int8 or nf4."),
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
MaxTokensOption = Annotated[
    int, typer.Option("--max-tokens", min=1, help="Most tokens to generate.")
]
TemperatureOption = Annotated[
    float, typer.Option(min=0.0, help="Sampling temperature; 0 decodes greedily.")
]
TopPOption = Annotated[
    float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling mass (1 = off).")
]
TopKOption = Annotated[int, typer.Option("--top-k", min=0, help="Top-k sampling (0 = off).")]
SeedOption = Annotated[int | None, typer.Option(help="Random seed for sampling.")]
StopOption = Annotated[
    list[str] | None, typer.Option("--stop", help="Stop at this string (repeatable).")
]
SystemOption = Annotated[str | None, typer.Option(help="System prompt.")]


def _media_option(modality: str) -> typer.models.OptionInfo:
    return typer.Option(
        f"--{modality}",
        exists=True,
        dir_okay=False,
        readable=True,
        help=f"A {modality} file to attach (repeatable).",
    )


ImageOption = Annotated[list[Path] | None, _media_option("image")]
AudioOption = Annotated[list[Path] | None, _media_option("audio")]
VideoOption = Annotated[list[Path] | None, _media_option("video")]
ThermalOption = Annotated[list[Path] | None, _media_option("thermal")]
DepthOption = Annotated[list[Path] | None, _media_option("depth")]
ImuOption = Annotated[list[Path] | None, _media_option("imu")]


def media_items(**files: list[Path] | None) -> list[MediaItem]:
    """``image=[...], audio=[...]`` -> media items, in modality-then-argument order."""
    return [
        MediaItem(modality, str(path), name=str(path))
        for modality, paths in files.items()
        for path in paths or ()
    ]


# -- loading ---------------------------------------------------------------------------------


def load_engine(
    bundle: Path, precision: str, device: str, *, max_batch_size: int = 8
) -> GenerationEngine:
    """The bundle's shared model on ``device`` with a fresh engine; ``precision="auto"`` is
    fp16 on a GPU and fp32 on the CPU (where fp16 matmuls are slow)."""
    hide_loading_bars()
    from langchain_pandagpt.generation.engine import GenerationEngine
    from langchain_pandagpt.generation.registry import get_shared_model
    from langchain_pandagpt.model.bundle import PrecisionChoice

    model = get_shared_model(bundle, precision=cast(PrecisionChoice, precision), device=device)
    return GenerationEngine(model, max_batch_size=max_batch_size)


def sampling_params(
    max_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    seed: int | None,
    stop: list[str] | None,
) -> SamplingParams:
    from langchain_pandagpt.generation.engine import SamplingParams

    return SamplingParams(
        max_new_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stop=tuple(stop or ()),
    )


def bundle_embeddings(bundle: Path | None, imagebind: Path | None) -> ImageBindEmbeddings:
    """ImageBind embeddings from ``--imagebind`` or else the bundle's ImageBind."""
    from langchain_pandagpt.embeddings import ImageBindEmbeddings
    from langchain_pandagpt.model.bundle import imagebind_checkpoint

    if imagebind is None:
        if bundle is None:
            raise ValueError("pass --bundle (or set PANDAGPT_BUNDLE) or --imagebind")
        imagebind = imagebind_checkpoint(bundle)
    return ImageBindEmbeddings(checkpoint=imagebind)
