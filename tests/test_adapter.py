"""Reference ``pytorch_model.pt`` <-> PEFT adapter: keys, numerics and round trips."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import LlamaForCausalLM

from langchain_pandagpt.errors import CheckpointError
from langchain_pandagpt.model.adapter import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    PROJECTION_NAME,
    apply_adapter,
    convert_reference_checkpoint,
    export_reference_checkpoint,
    read_peft_adapter,
    read_reference_checkpoint,
    write_peft_adapter,
    write_reference_checkpoint,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

PROMPT = torch.tensor([[1, 570, 413, 650, 369, 385, 320, 356, 13, 319, 345]])


@pytest.fixture(scope="module")
def converted(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "adapter"
    assert convert_reference_checkpoint(tiny_bundle / "pytorch_model.pt", out) == out
    return out


def _base_llm(bundle: Path) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(bundle / "llm").eval()


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = model(input_ids=PROMPT).logits
    return logits


def test_converted_adapter_loads_in_peft_with_every_lora_weight(
    tiny_bundle: Path, converted: Path
) -> None:
    assert {p.name for p in converted.iterdir()} == {
        ADAPTER_CONFIG_NAME,
        ADAPTER_WEIGHTS_NAME,
        PROJECTION_NAME,
    }
    config = LoraConfig.from_pretrained(str(converted))
    assert (config.r, config.lora_alpha, config.lora_dropout, config.bias) == (8, 8, 0.1, "none")
    assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(_base_llm(tiny_bundle), str(converted))
    assert not [w for w in caught if "missing" in str(w.message).lower()]
    loaded = peft_model.state_dict()
    reference = torch.load(tiny_bundle / "pytorch_model.pt", weights_only=True)
    lora_keys = [key for key in reference if key.startswith("llama_model.")]
    assert len(lora_keys) == 2 * 4 * 2  # 2 layers x q/k/v/o x A/B
    for key in lora_keys:
        assert torch.equal(loaded[key.removeprefix("llama_model.")].half(), reference[key])


def test_reference_and_converted_adapters_give_identical_logits(
    tiny_bundle: Path, converted: Path
) -> None:
    base = _logits(_base_llm(tiny_bundle))
    ours = _logits(
        apply_adapter(
            _base_llm(tiny_bundle), read_reference_checkpoint(tiny_bundle / "pytorch_model.pt")
        )
    )
    from_converted = _logits(apply_adapter(_base_llm(tiny_bundle), read_peft_adapter(converted)))
    from_peft = _logits(PeftModel.from_pretrained(_base_llm(tiny_bundle), str(converted)).eval())
    assert torch.equal(ours, from_converted)
    assert torch.equal(ours, from_peft)
    assert (ours - base).abs().max() > 0.1  # the adapter matters


def test_export_round_trips_byte_for_byte(
    tiny_bundle: Path, converted: Path, tmp_path: Path
) -> None:
    exported = export_reference_checkpoint(converted, tmp_path / "pytorch_model.pt")
    assert exported.read_bytes() == (tiny_bundle / "pytorch_model.pt").read_bytes()
    again = write_peft_adapter(read_reference_checkpoint(exported), tmp_path / "again")
    for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, PROJECTION_NAME):
        assert (again / name).read_bytes() == (converted / name).read_bytes()


def test_export_folds_lora_scaling_into_b(converted: Path, tmp_path: Path) -> None:
    weights = read_peft_adapter(converted)
    weights.config.lora_alpha = 2 * weights.config.r  # scaling 2
    exported = read_reference_checkpoint(write_reference_checkpoint(weights, tmp_path / "x.pt"))
    assert exported.config.lora_alpha == exported.config.r
    for key, tensor in weights.lora.items():
        expected = tensor.float() * 2 if ".lora_B." in key else tensor.float()
        assert torch.equal(exported.lora[key].float(), expected.half().float())

    weights.config.use_dora = True
    with pytest.raises(CheckpointError, match="cannot express use_dora"):
        write_reference_checkpoint(weights, tmp_path / "dora.pt")


def test_bad_adapter_files(tiny_bundle: Path, tmp_path: Path) -> None:
    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(
        CheckpointError, match=r"other\.pt: 1 keys are not PandaGPT adapter weights"
    ):
        read_reference_checkpoint(tmp_path / "other.pt")
    state = torch.load(tiny_bundle / "pytorch_model.pt", weights_only=True)
    del state["llama_proj.bias"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"missing llama_proj\.bias"):
        read_reference_checkpoint(tmp_path / "partial.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="weights-only pickle"):
        read_reference_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(
        CheckpointError, match=r"adapter_config\.json: PEFT adapter config not found"
    ):
        read_peft_adapter(tmp_path)
