"""What every ``pandagpt`` command shares: the app, consoles, user-error handling, options and
the checks that run before anything heavy is imported.

Importing the CLI loads neither PyTorch nor transformers: the commands import them once their
arguments have been checked, so a wrong bundle path, precision, device or file is reported in
well under a second, and ``pandagpt --help`` starts quickly. Nothing printed on stdout is read as
rich markup, so file names and model output print as they are.
"""

from __future__ import annotations

import io
import re
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, cast

import typer
from rich.console import Console
from rich.markup import escape

from langchain_pandagpt.errors import PandaGPTError

if TYPE_CHECKING:
    from langchain_pandagpt.conversation import MediaItem
    from langchain_pandagpt.embeddings import ImageBindEmbeddings
    from langchain_pandagpt.generation.engine import GenerationEngine, SamplingParams

#: ``langchain_pandagpt.media.item.MEDIA_MODALITIES``, spelled out here so that building the
#: options needs no PyTorch (a test keeps the two equal).
MODALITIES: Final = ("image", "video", "audio", "thermal", "depth", "imu")
#: ``langchain_pandagpt.model.bundle.PRECISION_CHOICES``, for the same reason (a test, too).
PRECISIONS: Final = ("auto", "fp32", "fp16", "bf16", "int8", "nf4")
#: Environment variable naming the default bundle (as for ``ChatPandaGPT()``).
BUNDLE_ENV: Final = "PANDAGPT_BUNDLE"
#: The largest question ``pandagpt ask`` reads from stdin (a bound, not a hang, on /dev/zero).
MAX_STDIN_BYTES: Final = 1 << 20

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")

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
def _stdio() -> None:
    """File names that are not UTF-8 travel through the CLI as surrogate escapes (as Python
    decodes ``argv``); printing them writes their original bytes instead of failing. Text
    arguments are checked for valid UTF-8 separately (:func:`utf8_text`)."""
    for stream in (sys.stdin, sys.stdout):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="surrogateescape")


# -- checks that need no PyTorch ---------------------------------------------------------------


def utf8_problem(text: str) -> str | None:
    """Why ``text`` (decoded from argv or stdin with surrogate escapes) is not valid UTF-8 text,
    or ``None`` when it is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raw = text[exc.start : exc.end].encode("utf-8", "surrogateescape")
        return f"is not valid UTF-8 (byte {raw[:1].hex()} at character {exc.start})"
    return None


def utf8_text(value: Any) -> Any:
    """Option/argument callback: refuses text (or a list of texts) that is not valid UTF-8,
    naming the parameter, before it reaches a tokenizer."""
    for text in value if isinstance(value, list | tuple) else [value]:
        if isinstance(text, str) and (problem := utf8_problem(text)):
            raise typer.BadParameter(f"{problem}; pass the text in UTF-8")
    return value


def check_regular_file(path: Path) -> None:
    """Refuses anything but a regular file (directories, devices such as /dev/zero, FIFOs,
    sockets) before it is opened: reading those blocks or never ends."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise typer.BadParameter(f"{path}: file not found") from None
    except OSError as exc:
        raise typer.BadParameter(f"{path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        kind = (
            "a directory"
            if stat.S_ISDIR(mode)
            else "a FIFO (named pipe)"
            if stat.S_ISFIFO(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a regular file"
        )
        raise typer.BadParameter(f"{path} is {kind}; give a regular file")


def regular_files(value: Any) -> Any:
    """Option/argument callback: :func:`check_regular_file` on a path or a list of paths."""
    for path in value if isinstance(value, list | tuple) else [value]:
        if path is not None:
            check_regular_file(Path(path))
    return value


def check_precision(value: str) -> str:
    if value not in PRECISIONS:
        raise typer.BadParameter(f"{value!r} is not a precision; use {', '.join(PRECISIONS)}")
    return value


def check_modalities(value: list[str] | None) -> list[str] | None:
    for modality in value or ():
        if modality not in MODALITIES:
            raise typer.BadParameter(f"{modality!r} is not one of {', '.join(MODALITIES)}")
    return value


def check_device(value: str) -> str:
    if not _DEVICE.fullmatch(value):
        raise typer.BadParameter(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N")
    return value


def check_bundle(bundle: Path | None) -> Path:
    """The bundle's ``pandagpt.json`` must exist, checked before the model code is imported (so
    a wrong path is reported at once); its contents are checked when it loads."""
    if bundle is None:
        raise ValueError(
            f"no bundle given: pass --bundle DIR or set {BUNDLE_ENV}=DIR (a folder with a "
            "pandagpt.json; `pandagpt create-tiny-checkpoint DIR` makes a small one offline)"
        )
    path = bundle.expanduser()
    manifest = path if path.suffix == ".json" else path / "pandagpt.json"
    if not manifest.is_file():
        missing = (
            f"{path}: no such file or folder" if not path.exists() else f"{manifest}: not found"
        )
        raise ValueError(
            f"{missing}; --bundle (or {BUNDLE_ENV}) names a bundle folder with a pandagpt.json, "
            "or the pandagpt.json itself"
        )
    return bundle


def check_encoder(bundle: Path | None, imagebind: Path | None) -> None:
    """``--imagebind`` or a bundle must be given (the bundle checked as by :func:`check_bundle`)."""
    if imagebind is None:
        if bundle is None:
            raise ValueError(f"pass --bundle (or set {BUNDLE_ENV}) or --imagebind")
        check_bundle(bundle)


def read_stdin_text(what: str) -> str:
    """All of stdin as UTF-8 text, at most :data:`MAX_STDIN_BYTES`."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # a text-only stream (e.g. replaced by a test harness)
        text = sys.stdin.read(MAX_STDIN_BYTES + 1)
        data = text.encode("utf-8", "surrogateescape")
    else:
        data = stream.read(MAX_STDIN_BYTES + 1)
    if len(data) > MAX_STDIN_BYTES:
        raise ValueError(f"{what} read from stdin is longer than {MAX_STDIN_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        byte = data[exc.start : exc.start + 1].hex()
        raise ValueError(
            f"{what} read from stdin is not valid UTF-8 (byte {byte} at offset {exc.start}); "
            "send UTF-8 text"
        ) from None


# -- options ---------------------------------------------------------------------------------

BundleOption = Annotated[
    Path | None,
    typer.Option(
        "--bundle",
        "-b",
        envvar=BUNDLE_ENV,
        help=f"PandaGPT bundle folder (or its pandagpt.json); defaults to ${BUNDLE_ENV}.",
        show_envvar=True,
    ),
]
PrecisionOption = Annotated[
    str,
    typer.Option(
        callback=check_precision,
        help=f"{', '.join(PRECISIONS)}: auto is fp16 on a GPU and fp32 on the CPU; int8 and nf4 "
        "quantize the LLM.",
    ),
]
DeviceOption = Annotated[
    str, typer.Option(callback=check_device, help="auto, cpu, cuda or cuda:N.")
]
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
    list[str] | None,
    typer.Option("--stop", callback=utf8_text, help="Stop at this string (repeatable)."),
]
SystemOption = Annotated[str | None, typer.Option(callback=utf8_text, help="System prompt.")]

_MEDIA_HELP: Final = {
    "image": "An image file",
    "video": "A video file",
    "audio": "An audio file",
    "thermal": "A thermal image",
    "depth": "A depth map (16-bit PNG in mm, or .npy in m)",
    "imu": "An IMU recording (.npy, 6 x 2000)",
}


def _media_option(modality: str) -> Any:
    return typer.Option(
        f"--{modality}",
        exists=True,
        dir_okay=False,
        readable=True,
        callback=regular_files,
        help=f"{_MEDIA_HELP[modality]} to attach (repeatable).",
    )


ImageOption = Annotated[list[Path] | None, _media_option("image")]
AudioOption = Annotated[list[Path] | None, _media_option("audio")]
VideoOption = Annotated[list[Path] | None, _media_option("video")]
ThermalOption = Annotated[list[Path] | None, _media_option("thermal")]
DepthOption = Annotated[list[Path] | None, _media_option("depth")]
ImuOption = Annotated[list[Path] | None, _media_option("imu")]


def media_items(**files: list[Path] | None) -> list[MediaItem]:
    """``image=[...], audio=[...]`` -> media items, in modality-then-argument order."""
    from langchain_pandagpt.conversation import MediaItem

    return [
        MediaItem(modality, str(path), name=str(path))
        for modality, paths in files.items()
        for path in paths or ()
    ]


# -- loading ---------------------------------------------------------------------------------


def load_engine(
    bundle: Path | None, precision: str, device: str, *, max_batch_size: int = 8
) -> GenerationEngine:
    """The bundle's shared model on ``device`` with a fresh engine; ``precision="auto"`` is
    fp16 on a GPU and fp32 on the CPU (where fp16 matmuls are slow)."""
    bundle = check_bundle(bundle)
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
    check_encoder(bundle, imagebind)
    from langchain_pandagpt.embeddings import ImageBindEmbeddings
    from langchain_pandagpt.model.bundle import imagebind_checkpoint

    if imagebind is None:
        assert bundle is not None
        imagebind = imagebind_checkpoint(bundle)
    return ImageBindEmbeddings(checkpoint=imagebind)
