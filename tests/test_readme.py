"""Every Python block of the README runs, as written, against the tiny bundle (issue 13).

Convention: an HTML comment ``<!-- needs: REASON -->`` on the line just before a fenced
```` ```python ```` block marks a block that cannot run here (``real-weights``: it loads the
released models; ``a running server``: it talks to ``pandagpt serve``). Such a block is
skipped under its name with that reason, so it shows in the test report; every other block
runs, in a fresh namespace, with ``PANDAGPT_BUNDLE`` set to the tiny bundle, in a temporary
folder that holds the files the README names (``holiday/``; the ``/tmp/media`` and
``/tmp/tiny`` of its shell walk-through are redirected there).

Blocks are named ``<section>-<n>``: the slug of the heading above and the block's number in
that section, e.g. ``try-it-offline-the-tiny-bundle-1``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from langchain_pandagpt.demo import write_demo_media

README = Path(__file__).resolve().parents[1] / "README.md"
_NEEDS = re.compile(r"<!--\s*needs:\s*(.+?)\s*-->")


@dataclass(frozen=True)
class Block:
    name: str
    line: int  # of the first code line, 1-based
    code: str
    needs: str | None


def readme_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    section, count, fence = "top", 0, None
    for index, line in enumerate(lines):
        if fence is None and line.startswith("#"):
            section = re.sub(r"[^a-z0-9]+", "-", line.lstrip("#").strip().lower()).strip("-")
            count = 0
        elif fence is None and line.startswith("```"):
            fence = (index, line[3:].strip())
        elif fence is not None and line.strip() == "```":
            start, language = fence
            fence = None
            if language != "python":
                continue
            count += 1
            previous = lines[start - 1].strip() if start else ""
            marker = _NEEDS.fullmatch(previous)
            code = "\n".join(lines[start + 1 : index]) + "\n"
            blocks.append(
                Block(f"{section}-{count}", start + 2, code, marker.group(1) if marker else None)
            )
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def test_markers_belong_to_python_blocks() -> None:
    """A ``needs`` marker anywhere but right before a Python block would be ignored silently."""
    lines = README.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if _NEEDS.search(line):
            assert lines[number + 1].strip() == "```python", f"README.md:{number + 1}"
    assert sum(block.needs is None for block in BLOCKS) >= 2  # the README keeps runnable ones


@pytest.fixture
def readme_folder(tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_demo_media(tmp_path / "media")
    write_demo_media(tmp_path / "holiday", seed=1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PANDAGPT_BUNDLE", str(tiny_bundle))
    return tmp_path


@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_readme_block(block: Block, readme_folder: Path, tiny_bundle: Path) -> None:
    if block.needs:
        pytest.skip(f"README block {block.name} (README.md:{block.line}) needs {block.needs}")
    code = block.code.replace("/tmp/media", str(readme_folder / "media"))
    code = code.replace("/tmp/tiny", str(tiny_bundle))
    exec(compile(code, f"README.md:{block.line}", "exec"), {"__name__": "__readme__"})
