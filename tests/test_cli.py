"""The ``pandagpt`` command line: every command in a real process, as
``python -m langchain_pandagpt.cli`` with this interpreter (run in parallel, they are slow to
start), details and error paths through ``CliRunner``.

``pandagpt serve`` runs as a real process in ``test_server.py``.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import runpy
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from marks import child_processes
from typer.testing import CliRunner

from langchain_pandagpt.cli import app
from langchain_pandagpt.demo import write_demo_media

CHAT_SCRIPT = """Hello there
/image {image}
What is in this picture?
/audio /no/such/file.wav
/teleport now
/help
/reset
And now?
/quit
never read
"""


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP Range support, as a download mirror would."""

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if (spec := self.headers.get("Range", "")).startswith("bytes="):
            start = int(spec[6:].split("-")[0])
            self.send_response(206)
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, bytes]]:
    """A local HTTP server holding a fake imagebind_huge.pth: ``(url, content)``."""
    root = tmp_path_factory.mktemp("mirror")
    content = os.urandom(300_000)
    (root / "imagebind_huge.pth").write_bytes(content)
    handler = lambda *a: _RangeHandler(*a, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/imagebind_huge.pth", content
    server.shutdown()


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_demo_media(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="module")
def runs(
    tiny_bundle: Path,
    media: dict[str, Path],
    mirror: tuple[str, bytes],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Run]:
    """Every command run once in a child ``python -m langchain_pandagpt.cli``, four at a time."""
    out = tmp_path_factory.mktemp("cli")
    url, content = mirror
    (out / "imagebind").mkdir()
    (out / "imagebind" / "imagebind_huge.pth.part").write_bytes(content[:100_000])  # resume
    bundle = ["--bundle", str(tiny_bundle)]
    folder = media["image"].parent
    ask = ["ask", *bundle, "--image", str(media["image"]), "--max-tokens", "6", "--json", "Hi?"]
    embed = ["embed", "a sunset", "--audio", str(media["audio"]), "--media", str(media["imu"])]
    embed += [*bundle, "--out", str(out / "vectors.npy")]
    fetch = ["download", "imagebind", "--url", url, "--dest", str(out / "imagebind")]
    fetch += ["--sha256", hashlib.sha256(content).hexdigest()]
    pth = str(tiny_bundle / "pytorch_model.pt")
    imagebind = str(tiny_bundle / "imagebind.safetensors")
    script = CHAT_SCRIPT.format(image=media["image"])
    commands: dict[str, tuple[list[str], str | None, dict[str, str]]] = {
        "tiny": (["create-tiny-checkpoint", str(out / "tiny"), "--seed", "3"], None, {}),
        "convert": (["convert-checkpoint", pth, str(out / "peft")], None, {}),
        "convert-imagebind": (["convert-imagebind", imagebind, str(out / "ib.st")], None, {}),
        "ask": (ask, None, {}),
        "chat": (["chat", *bundle, "--max-tokens", "4"], script, {}),
        "embed": (embed, None, {}),
        "index": (["index", str(folder), *bundle], None, {}),
        "download-offline": (["download", "pandagpt-7b"], None, {"HF_HUB_OFFLINE": "1"}),
        "download-imagebind": (fetch, None, {}),
        "help": (["--help"], None, {}),
    }

    def run(args: list[str], stdin: str | None, env: dict[str, str]) -> Run:
        done = subprocess.run(
            [sys.executable, "-m", "langchain_pandagpt.cli", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, **env},
        )
        return Run(done.returncode, done.stdout, done.stderr)

    with ThreadPoolExecutor(4) as pool:
        futures = {name: pool.submit(run, *spec) for name, spec in commands.items()}
        results = {name: future.result() for name, future in futures.items()}
    search = ["search", "a sunset", "--index", str(folder), *bundle, "-k", "3", "--json"]
    results["search"] = run(search, None, {})
    results["paths"] = Run(0, str(out), "")
    return results


@child_processes
def test_module_entry_point_and_console_script_are_the_same_app(runs: dict[str, Run]) -> None:
    """``python -m langchain_pandagpt.cli`` calls itself ``pandagpt``, the documented script."""
    assert "Usage: pandagpt" in _ok(runs["help"])
    (script,) = [s for s in entry_points(group="console_scripts") if s.name == "pandagpt"]
    assert script.load() is app


def test_python_dash_m_runs_the_app(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``__main__`` in-process (the child-process runs above are slow)."""
    monkeypatch.setattr(sys, "argv", ["python -m langchain_pandagpt.cli", "download", "--list"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("langchain_pandagpt.cli", run_name="__main__")
    assert exited.value.code == 0
    assert "pandagpt-7b" in capsys.readouterr().out


def _ok(run: Run) -> str:
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    return run.stdout


@child_processes
def test_create_and_convert_commands(runs: dict[str, Run]) -> None:
    out = Path(runs["paths"].stdout)
    assert "tiny bundle written" in _ok(runs["tiny"])
    assert (out / "tiny" / "pandagpt.json").is_file()
    _ok(runs["convert"])
    assert (out / "peft" / "adapter_config.json").is_file()
    _ok(runs["convert-imagebind"])
    assert (out / "ib.st").is_file()


@child_processes
def test_ask_with_an_image_prints_json_with_usage(runs: dict[str, Run]) -> None:
    answer = json.loads(_ok(runs["ask"]))
    assert isinstance(answer["text"], str) and answer["finish_reason"] in ("stop", "length")
    assert answer["usage"]["completion_tokens"] <= 6
    assert answer["usage"]["total_tokens"] == sum(
        answer["usage"][k] for k in ("prompt_tokens", "completion_tokens")
    )


@child_processes
def test_chat_driven_through_stdin(runs: dict[str, Run]) -> None:
    stdout = _ok(runs["chat"])
    assert "[attached image: picture-0.png]" in stdout
    assert "Commands:" in stdout and "/thermal PATH" in stdout
    assert "[conversation cleared]" in stdout
    assert stdout.count("\n") >= 5  # three answers plus the command echoes
    assert "file not found" in runs["chat"].stderr
    assert "unknown command /teleport" in runs["chat"].stderr
    assert "never read" not in stdout


@child_processes
def test_embed_saves_vectors(runs: dict[str, Run]) -> None:
    _ok(runs["embed"])
    vectors = np.load(Path(runs["paths"].stdout) / "vectors.npy")
    assert vectors.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


@child_processes
def test_index_then_search(runs: dict[str, Run]) -> None:
    assert "6 files indexed" in _ok(runs["index"])
    results = json.loads(_ok(runs["search"]))
    assert len(results) == 3
    assert all(Path(r["source"]).is_file() and r["modality"] for r in results)


@child_processes
def test_download_fails_cleanly_offline(runs: dict[str, Run]) -> None:
    run = runs["download-offline"]
    assert run.returncode == 1
    assert "openllmplayground/pandagpt_7b_max_len_1024" in run.stderr
    assert "offline" in run.stderr and "Traceback" not in run.stderr


@child_processes
def test_download_resumes_and_checks_the_checksum(
    runs: dict[str, Run], mirror: tuple[str, bytes]
) -> None:
    stdout = _ok(runs["download-imagebind"])
    target = Path(runs["paths"].stdout) / "imagebind" / "imagebind_huge.pth"
    assert target.read_bytes() == mirror[1]
    assert "checksums verified" in stdout
    assert hashlib.sha256(mirror[1]).hexdigest() in stdout


# -- in-process details ----------------------------------------------------------------------

runner = CliRunner()


def _invoke(*args: str, stdin: str | None = None) -> Any:
    return runner.invoke(app, list(args), input=stdin)


def _words(output: str) -> str:
    """Output without rich's box drawing and line wrapping."""
    return " ".join(output.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


def test_every_command_has_help() -> None:
    names = list(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert len(names) == 11 and "apply-delta" in names
    for name in names:
        result = _invoke(name, "--help")
        assert result.exit_code == 0 and "Usage" in result.output, name


def test_ask_reads_the_question_from_stdin(tiny_bundle: Path) -> None:
    result = _invoke("ask", "--bundle", str(tiny_bundle), "--max-tokens", "3", stdin="Why?\n")
    assert result.exit_code == 0, result.output
    assert result.output.endswith("\n")


def test_user_errors_are_one_line(tiny_bundle: Path, tmp_path: Path) -> None:
    missing = _invoke("ask", "--bundle", str(tmp_path), "Hi")
    assert missing.exit_code == 1 and "pandagpt.json" in missing.output
    assert "Traceback" not in missing.output
    no_file = _invoke("ask", "--bundle", str(tiny_bundle), "--image", str(tmp_path / "x.png"), "Hi")
    assert no_file.exit_code == 2 and "does not exist" in _words(no_file.output)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    bad = _invoke("ask", "--bundle", str(tiny_bundle), "--image", str(broken), "Hi")
    assert bad.exit_code == 1 and "broken.png" in bad.output
    empty = _invoke("ask", "--bundle", str(tiny_bundle), stdin="")
    assert empty.exit_code == 1 and "empty" in empty.output
    unknown = _invoke("download", "not-a-model")
    assert unknown.exit_code == 1 and "unknown download" in unknown.output
    no_index = _invoke("search", "cats", "--index", str(tmp_path), "--bundle", str(tiny_bundle))
    assert no_index.exit_code == 1 and "manifest.json" in no_index.output


def test_embed_prints_vectors_and_similarities(tiny_bundle: Path, media: dict[str, Path]) -> None:
    table = _invoke("embed", "a red sky", "--image", str(media["image"]), "-b", str(tiny_bundle))
    assert table.exit_code == 0, table.output
    assert "cosine" in table.output and "32 floats" in table.output
    printed = _invoke("embed", "a", "b", "--bundle", str(tiny_bundle), "--json")
    records = json.loads(printed.output)
    assert [r["modality"] for r in records] == ["text", "text"]
    assert len(records[0]["embedding"]) == 32
    assert _invoke("embed", "--bundle", str(tiny_bundle)).exit_code == 2


def test_index_is_incremental_and_search_filters(tiny_bundle: Path, tmp_path: Path) -> None:
    paths = write_demo_media(tmp_path / "media", seed=1)
    index = str(tmp_path / "idx")
    first = _invoke("index", str(tmp_path / "media"), "--index", index, "-b", str(tiny_bundle))
    assert "added 6" in first.output, first.output
    paths["image"].unlink()
    again = _invoke("index", str(tmp_path / "media"), "--index", index, "-b", str(tiny_bundle))
    assert "removed 1, unchanged 5" in again.output, again.output
    found = _invoke(
        "search", "--media", str(paths["audio"]), "--index", index, "-b", str(tiny_bundle),
        "--modality", "audio", "--json",
    )  # fmt: skip
    assert [r["modality"] for r in json.loads(found.output)] == ["audio"]
    both = _invoke("search", "x", "--media", str(paths["audio"]), "--index", index)
    assert both.exit_code == 2


def test_download_list_names_the_releases() -> None:
    listed = _invoke("download", "--list")
    assert listed.exit_code == 0
    assert "pandagpt-13b" in listed.output and "imagebind" in listed.output
