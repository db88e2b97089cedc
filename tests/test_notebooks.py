"""The example notebooks run top to bottom on the tiny bundle, and are committed without
outputs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nbformat
import pytest
from marks import child_processes
from nbclient import NotebookClient

from langchain_pandagpt.demo import demo_bundle

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def failures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BaseException | None]:
    """Runs every notebook, all at once (each in its own kernel), on the tiny bundle that
    ``demo_bundle`` makes in a fresh cache; returns each notebook's error, if any."""
    cache = tmp_path_factory.mktemp("cache")

    async def run(path: Path) -> BaseException | None:
        notebook = nbformat.read(path, as_version=4)
        folder = tmp_path_factory.mktemp(path.stem)
        client = NotebookClient(
            notebook,
            timeout=TIMEOUT_S,
            kernel_name="python3",
            resources={"metadata": {"path": str(folder)}},
        )
        try:
            await client.async_execute()
        except Exception as error:
            return error
        return None

    async def run_all() -> list[BaseException | None]:
        return await asyncio.gather(*(run(path) for path in NOTEBOOKS))

    with pytest.MonkeyPatch.context() as env:
        env.setenv("PANDAGPT_CACHE", str(cache))
        env.delenv("PANDAGPT_BUNDLE", raising=False)
        demo_bundle()  # made once here, so the kernels do not race to create it
        results = asyncio.run(run_all())
    return {path.stem: error for path, error in zip(NOTEBOOKS, results, strict=True)}


def test_there_are_three_examples() -> None:
    assert [path.stem for path in NOTEBOOKS] == ["01_multimodal_chat", "02_agent", "03_media_rag"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_has_no_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@child_processes
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs(path: Path, failures: dict[str, BaseException | None]) -> None:
    if (error := failures[path.stem]) is not None:
        raise error
