"""Hostile input to the ``pandagpt`` CLI (issue 12, item 10): special files and bytes that are
not UTF-8, through the real command line (``python -m langchain_pandagpt.cli``), each with a
timeout, so a hang fails the test instead of stalling the suite.

Before: ``--image /dev/zero`` or a FIFO hung for ever, and invalid UTF-8 in an argument or on
stdin ended in a tokenizer traceback. Now each is one clear error naming the input; file names
that are not UTF-8 keep working (they are bytes on Linux, not text).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from langchain_pandagpt.demo import write_demo_media

#: Seconds a refused input may take, with room for a loaded machine (it takes ~1 s).
QUICK = 60


def cli(
    *args: str | bytes | os.PathLike[str],
    stdin: bytes | None = None,
    stdin_file: Path | None = None,
    timeout: float = QUICK,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Runs the CLI with ``args`` (bytes pass through to argv unchanged)."""
    argv = [os.fsencode(a) if not isinstance(a, bytes) else a for a in args]
    command = [os.fsencode(sys.executable), b"-m", b"langchain_pandagpt.cli", *argv]
    with open(stdin_file, "rb") if stdin_file else open(os.devnull, "rb") as stream:
        return subprocess.run(
            command,
            input=stdin,
            stdin=None if stdin is not None else stream,
            capture_output=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )


def refused(done: subprocess.CompletedProcess[bytes], code: int, *needles: str) -> str:
    """The stderr of a cleanly refused command, checked for ``needles``."""
    err = " ".join(done.stderr.decode("utf-8", "replace").replace("│", " ").split())
    assert done.returncode == code, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    os.mkfifo(path)  # opening it for reading blocks until a writer comes: never, here
    return path


@pytest.mark.parametrize("option", ["--image", "--audio", "--video", "--depth"])
def test_devices_are_refused_before_reading(tiny_bundle: Path, option: str) -> None:
    done = cli("ask", "-b", tiny_bundle, option, "/dev/zero", "Hi")
    refused(done, 2, option, "/dev/zero is a device; give a regular file")


def test_a_fifo_is_refused_by_every_command_that_reads_files(
    tiny_bundle: Path, fifo: Path, tmp_path: Path
) -> None:
    refused(cli("ask", "-b", tiny_bundle, "--image", fifo, "Hi"), 2, "FIFO", "--image")
    refused(cli("embed", "-b", tiny_bundle, "--media", fifo), 2, "FIFO", "--media")
    refused(cli("search", "--media", fifo, "-b", tiny_bundle), 2, "FIFO", "--media")
    refused(cli("convert-checkpoint", fifo, tmp_path / "out"), 2, "FIFO")
    refused(cli("convert-imagebind", fifo, tmp_path / "ib.safetensors"), 2, "FIFO")


def test_a_directory_or_fifo_as_bundle_manifest_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pandagpt.json")
    refused(cli("ask", "-b", tmp_path, "Hi"), 1, "pandagpt.json: not found")


def test_endless_stdin_is_bounded(tiny_bundle: Path) -> None:
    done = cli("ask", "-b", tiny_bundle, stdin_file=Path("/dev/zero"))
    refused(done, 1, "the question read from stdin is longer than 1 MiB")


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((b"caf\xe9 au lait?",), "QUESTION"),
        ((b"--system", b"\xff\xfe", b"Hi"), "--system"),
        ((b"--stop", b"end\x80", b"Hi"), "--stop"),
    ],
)
def test_argv_that_is_not_utf8_names_the_argument(
    tiny_bundle: Path, args: tuple[bytes, ...], name: str
) -> None:
    err = refused(cli("ask", "-b", tiny_bundle, *args), 2, "not valid UTF-8", "pass the text")
    assert name.lower() in err.lower()


def test_embed_and_search_text_that_is_not_utf8(tiny_bundle: Path) -> None:
    refused(cli("embed", "-b", tiny_bundle, b"\xc3("), 2, "'text'", "not valid UTF-8")
    refused(cli("search", b"\xff", "-b", tiny_bundle), 2, "'query'", "not valid UTF-8")


def test_stdin_that_is_not_utf8(tiny_bundle: Path) -> None:
    for strict in ({}, {"PYTHONIOENCODING": "utf-8:strict"}):
        done = cli("ask", "-b", tiny_bundle, stdin=b"what is \xff?\n", env=strict)
        refused(done, 1, "stdin is not valid UTF-8 (byte ff at offset 8)")


@pytest.mark.slow
def test_non_utf8_file_names_work_and_bad_lines_do_not_end_the_chat(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """A file name of arbitrary bytes is a valid Linux path: attached and printed as its own
    bytes, under a strict UTF-8 locale too; a line of bad bytes is refused, the chat goes on."""
    image = write_demo_media(tmp_path / "media")["image"]
    odd = os.fsencode(tmp_path) + b"/caf\xe9.png"
    shutil.copy(image, os.fsdecode(odd))
    script = b"caf\xe9?\n/image " + odd + b"\nWhat is it?\n/quit\n"
    done = cli(
        "chat", "-b", tiny_bundle, "--max-tokens", "3",
        stdin=script, timeout=300, env={"PYTHONIOENCODING": "utf-8:strict"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
    assert b"[attached image: caf\xe9.png]" in done.stdout
    assert b"line 1 is not valid UTF-8 (byte e9 at character 3)" in done.stderr
    assert b"Traceback" not in done.stderr
