"""Making and loading a bundle and answering prints nothing but our own logs (issue 13): no
bitsandbytes kernel notice, no "Loading weights"/"Writing model shards" bar, no peft
FutureWarning. Each is silenced by its exact text, so everything else still shows.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from transformers.utils import logging as transformers_logging

from langchain_pandagpt.model.quiet import quiet_loading

_SCRIPT = """
import sys
from langchain_pandagpt import ChatPandaGPT, create_tiny_checkpoint

bundle = create_tiny_checkpoint(sys.argv[1])
for precision in ("auto", "int8", "nf4", "fp16"):
    llm = ChatPandaGPT(model=str(bundle), precision=precision, device="cpu", max_tokens=3)
    assert isinstance(llm.invoke("Hi").text, str)
print("answered")
"""


@pytest.mark.slow
def test_make_load_and_answer_print_only_our_warning(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Under the default warning filters, as a user runs it; fp16 on a CPU is there to show
    that our own warnings still come through."""
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "tiny")], timeout=600)
    out, err = capfd.readouterr()
    assert done.returncode == 0, err
    assert out == "answered\n"
    lines = err.splitlines()
    assert len(lines) == 1 and "fp16 on CPU works but is slow" in lines[0], err


def test_only_the_named_warning_is_silenced() -> None:
    with quiet_loading(), warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit(
            "`is_gradient_checkpointing` is deprecated and will be removed in v6.",
            FutureWarning,
            "modeling_utils.py",
            1,
            module="transformers.modeling_utils",
            registry={},
        )
        warnings.warn_explicit(
            "something else is deprecated",
            FutureWarning,
            "modeling_utils.py",
            2,
            module="transformers.modeling_utils",
            registry={},
        )
        warnings.warn("ours", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else is deprecated", "ours"]


def test_only_the_named_bitsandbytes_notices_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    with quiet_loading():
        pass  # installs the filters (import langchain_pandagpt already did)
    with caplog.at_level(logging.WARNING):
        ops = logging.getLogger("bitsandbytes.backends.cpu.ops")
        ops.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s", "x")
        ops.warning("a real bitsandbytes problem")
        matmul = logging.getLogger("bitsandbytes.autograd._functions")
        matmul.warning("MatMul8bitLt: inputs will be cast from %s to float16", "float32")
    assert [r.getMessage() for r in caplog.records] == ["a real bitsandbytes problem"]


def test_only_local_file_bars_are_hidden() -> None:
    with quiet_loading():
        hidden = transformers_logging.tqdm(range(2), desc="Loading weights")
        shown = transformers_logging.tqdm(range(2), desc="Downloading", disable=True)
    assert isinstance(hidden, transformers_logging.EmptyTqdm)
    assert not isinstance(shown, transformers_logging.EmptyTqdm)
    after = transformers_logging.tqdm(range(2), desc="Loading weights", disable=True)
    assert not isinstance(after, transformers_logging.EmptyTqdm)  # the hook is gone again
