"""The CLI checks its arguments before it imports anything heavy (issue 13), so a mistake is
reported at once; its help names ``PANDAGPT_BUNDLE``; ``create-tiny-checkpoint`` never mixes a
new bundle into an old folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from langchain_pandagpt.cli import app
from langchain_pandagpt.cli.common import MODALITIES, PRECISIONS
from langchain_pandagpt.media.item import MEDIA_MODALITIES
from langchain_pandagpt.model.bundle import PRECISION_CHOICES

#: Runs the CLI, then reports its exit status and which heavy packages it imported.
_DRIVER = """
import sys
from langchain_pandagpt.cli import app
try:
    app(sys.argv[1:], prog_name="pandagpt")
except SystemExit as exit:
    heavy = {"torch", "transformers", "peft", "bitsandbytes", "langchain_core"}
    loaded = sorted(heavy & {name.split(".")[0] for name in sys.modules})
    print(f"EXIT {exit.code} LOADED {loaded}", file=sys.stderr)
"""

runner = CliRunner()


def _words(text: str) -> str:
    return " ".join(text.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


def test_cli_constants_match_the_library() -> None:
    assert MODALITIES == MEDIA_MODALITIES
    assert PRECISIONS == PRECISION_CHOICES


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["ask", "-b", "{missing}", "Hi"], 1, "no such file or folder"),
        (["ask", "-b", "{empty}", "Hi"], 1, "pandagpt.json: not found"),
        (["ask", "Hi"], 1, "no bundle given: pass --bundle DIR or set PANDAGPT_BUNDLE"),
        (["ask", "-b", "{bundle}", "--precision", "fp64", "Hi"], 2, "is not a precision"),
        (["ask", "-b", "{bundle}", "--device", "tpu", "Hi"], 2, "is not a device"),
        (["ask", "-b", "{bundle}", "--image", "{missing}", "Hi"], 2, "does not exist"),
        (["ask", "-b", "{bundle}", "--image", "/dev/zero", "Hi"], 2, "is a device"),
        (["chat", "-b", "{missing}"], 1, "no such file or folder"),
        (["serve", "-b", "{missing}"], 1, "no such file or folder"),
        (["serve", "-b", "{bundle}", "--precision", "int4"], 2, "is not a precision"),
        (["embed", "x", "-b", "{missing}"], 1, "no such file or folder"),
        (["index", "{empty}", "-b", "{missing}"], 1, "no such file or folder"),
        (["search", "x", "-b", "{bundle}", "--modality", "smell"], 2, "is not one of"),
        (["create-tiny-checkpoint", "{bundle}"], 1, "is not empty"),
    ],
)
def test_argument_errors_come_before_heavy_imports(
    args: list[str], code: int, message: str, tiny_bundle: Path, tmp_path: Path
) -> None:
    """Each mistake is reported without importing PyTorch, transformers, peft or LangChain
    (~0.3 s of CPU; the issue measured 6-10 s before)."""
    names = {"missing": tmp_path / "nope", "empty": tmp_path, "bundle": tiny_bundle}
    argv = [arg.format(**names) for arg in args]
    env = {k: v for k, v in os.environ.items() if k != "PANDAGPT_BUNDLE"}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER, *argv], capture_output=True, text=True, env=env, timeout=60
    )
    elapsed = time.monotonic() - start
    err = _words(done.stderr)
    assert f"EXIT {code} LOADED []" in err, err
    assert message in err and "Traceback" not in err
    assert elapsed < 15, f"{elapsed:.1f} s"  # ~1 s on a loaded 2-core machine


def test_help_names_the_bundle_variable_and_does_not_require_the_option() -> None:
    for command in ("ask", "chat", "serve", "embed", "index", "search"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        text = _words(result.output)
        assert "PANDAGPT_BUNDLE" in text, command
        bundle_line = next(line for line in result.output.splitlines() if "--bundle" in line)
        assert "required" not in bundle_line, command
        for typo in ("A image", "A audio", "A imu", "[env: "):
            assert typo not in text, (command, typo)
        assert not re.search(r" \.(\s|$)", text), command  # a stray " ." (markup eaten)


def test_create_tiny_checkpoint_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    first = runner.invoke(app, ["create-tiny-checkpoint", str(target), "--peft"])
    assert first.exit_code == 0, first.output
    assert (target / "adapter").is_dir()
    before = sorted(p.name for p in target.iterdir())

    again = runner.invoke(app, ["create-tiny-checkpoint", str(target)])
    assert again.exit_code == 1 and "--force" in _words(again.output)
    assert sorted(p.name for p in target.iterdir()) == before  # untouched

    replaced = runner.invoke(app, ["create-tiny-checkpoint", str(target), "--force"])
    assert replaced.exit_code == 0, replaced.output
    assert (target / "pytorch_model.pt").is_file()
    assert not (target / "adapter").exists() and not (target / "projection.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no staging folders left


def test_force_never_deletes_a_folder_that_is_not_a_bundle(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["create-tiny-checkpoint", str(tmp_path), "--force"])
    assert result.exit_code == 1 and "holds no bundle" in _words(result.output)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    file = tmp_path / "notes.txt"
    result = runner.invoke(app, ["create-tiny-checkpoint", str(file)])
    assert result.exit_code == 1 and "is not a folder" in _words(result.output)
