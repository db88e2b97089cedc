"""The package root re-exports the public API, lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import langchain_pandagpt


@pytest.mark.parametrize("name", langchain_pandagpt.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(langchain_pandagpt, name) is not None


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute"):
        _ = langchain_pandagpt.NotAThing  # type: ignore[attr-defined]


def _loaded_after(statement: str) -> set[str]:
    """The heavy top-level packages a fresh interpreter has imported after ``statement``."""
    heavy = "{'torch', 'transformers', 'peft', 'bitsandbytes', 'accelerate', 'langchain_core'}"
    loaded = "{m.split('.')[0] for m in sys.modules}"
    code = f"import sys; {statement}; print(sorted({heavy} & {loaded}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr == "", out.stderr
    return set(eval(out.stdout))


def test_import_loads_no_torch_transformers_or_langchain() -> None:
    assert _loaded_after("import langchain_pandagpt") == set()
    assert _loaded_after("import langchain_pandagpt.cli") == set()


def test_chat_model_import_leaves_model_libraries_for_the_first_load() -> None:
    """peft (which imports bitsandbytes, 4.3 s of the 4-5 s the issue measured) and
    transformers' model code come with the first model, not with the class."""
    assert _loaded_after("from langchain_pandagpt import ChatPandaGPT") == {
        "torch",
        "langchain_core",
    }
