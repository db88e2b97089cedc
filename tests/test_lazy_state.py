"""Tensor-by-tensor safetensors loading: the same model as ``from_pretrained``, used by bundles."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from langchain_pandagpt.model import lazy_state
from langchain_pandagpt.model.bundle import load_pandagpt
from langchain_pandagpt.model.lazy_state import LazyTensor, lazy_state_dict


@pytest.fixture(scope="module")
def sharded_llm(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sharded")
    model = AutoModelForCausalLM.from_pretrained(tiny_bundle / "llm")
    model.save_pretrained(folder, max_shard_size="100KB")
    assert (folder / "model.safetensors.index.json").is_file()
    return folder


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lazy_state_loads_the_same_model(
    tiny_bundle: Path, sharded_llm: Path, dtype: torch.dtype
) -> None:
    reference = AutoModelForCausalLM.from_pretrained(tiny_bundle / "llm", dtype=dtype)
    for folder in (tiny_bundle / "llm", sharded_llm):
        state = lazy_state_dict(folder)
        assert state is not None and set(state) == set(reference.state_dict())
        model = LlamaForCausalLM.from_pretrained(
            None, config=reference.config, state_dict=state, dtype=dtype
        )
        for name, tensor in reference.state_dict().items():
            assert torch.equal(model.state_dict()[name], tensor), name


def test_lazy_tensor_reads_on_demand(tiny_bundle: Path) -> None:
    state = lazy_state_dict(tiny_bundle / "llm")
    assert state is not None
    lazy = state["lm_head.weight"]
    assert lazy.get_shape() == [804, 64] and lazy.get_dtype() == "F32"
    assert lazy[...].shape == (804, 64) and lazy[:2].shape == (2, 64)
    assert "lm_head.weight" in repr(lazy)


def test_folders_without_safetensors_use_the_normal_path(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    assert lazy_state_dict(tmp_path) is None
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"a": "gone"}}')
    assert lazy_state_dict(tmp_path) is None  # transformers reports the missing shard


def test_bundles_load_their_llm_tensor_by_tensor(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    real = LazyTensor.__getitem__

    def counted(self: LazyTensor, index: object) -> torch.Tensor:
        reads.append(self.name)
        return real(self, index)

    monkeypatch.setattr(lazy_state.LazyTensor, "__getitem__", counted)
    model = load_pandagpt(tiny_bundle, precision="bf16", device="cpu")
    assert sorted(reads) == sorted(lazy_state_dict(tiny_bundle / "llm") or {})
    assert {p.dtype for p in model.llm.parameters()} == {torch.bfloat16}
