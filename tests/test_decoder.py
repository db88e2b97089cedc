"""The lean LLaMA-family decoder against the Hugging Face forward it replaces."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from langchain_pandagpt.conversation import Message
from langchain_pandagpt.generation.decoder import (
    Decoder,
    HFDecoder,
    KVCache,
    LeanDecoder,
    decoder_for,
)
from langchain_pandagpt.generation.engine import GenerationEngine, SamplingParams
from langchain_pandagpt.model.bundle import load_pandagpt

SMALL = dict(
    vocab_size=96,
    hidden_size=48,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query attention
    max_position_embeddings=256,
)


def _llama() -> PreTrainedModel:
    return LlamaForCausalLM(
        LlamaConfig(**SMALL, rope_scaling={"rope_type": "linear", "factor": 2.0})
    )


def _mistral() -> PreTrainedModel:
    return MistralForCausalLM(MistralConfig(**SMALL, sliding_window=None))


def _qwen2() -> PreTrainedModel:
    return Qwen2ForCausalLM(Qwen2Config(**SMALL, use_sliding_window=False))  # q/k/v biases


ARCHITECTURES: dict[str, Callable[[], PreTrainedModel]] = {
    "llama": _llama,
    "mistral": _mistral,
    "qwen2": _qwen2,
}


def _row_past(decoder: Decoder, embeds: Tensor) -> KVCache:
    """The cache a single unpadded row leaves after running ``embeds`` ``(1, n, hidden)``."""
    n = embeds.shape[1]
    batch = decoder.start([None], 0, n)
    batch.forward(embeds, torch.arange(n)[None], torch.ones(1, n, dtype=torch.long))
    return batch.row(0, torch.arange(n))


def _run(decoder: Decoder, embed: Callable[[Tensor], Tensor], hidden: int) -> list[Tensor]:
    """A ragged batch through prefill, three decode steps and a row leaving; all logits."""
    torch.manual_seed(3)
    prefixes = [torch.randn(1, n, hidden) for n in (5, 9)]
    pasts: list[KVCache | None] = [_row_past(decoder, p) for p in prefixes] + [None]
    cached_lengths, new_lengths = [5, 9, 0], [4, 2, 7]
    cached, new = max(cached_lengths), max(new_lengths)
    mask = torch.zeros(3, cached + new, dtype=torch.long)
    embeds = torch.zeros(3, new, hidden)
    for i, (c, n) in enumerate(zip(cached_lengths, new_lengths, strict=True)):
        mask[i, cached - c : cached] = 1
        mask[i, cached + new - n :] = 1
        embeds[i, new - n :] = torch.randn(n, hidden)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    batch = decoder.start(pasts, cached, cached + new + 3)
    logits = [batch.forward(embeds, positions[:, cached:], mask)]
    next_positions = positions[:, -1:] + 1
    for step in range(3):
        if step == 2:  # the middle row finishes
            keep = torch.tensor([0, 2])
            batch.select(keep)
            mask, next_positions = mask[keep], next_positions[keep]
        tokens = torch.tensor([[7 + step]] * len(mask))
        mask = torch.nn.functional.pad(mask, (0, 1), value=1)
        logits.append(batch.forward(embed(tokens), next_positions, mask))
        next_positions = next_positions + 1
    logits.extend(x for k, v in batch.row(1, mask[1].nonzero().squeeze(-1)) for x in (k, v))
    return logits


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_lean_forward_equals_hugging_face(name: str) -> None:
    torch.manual_seed(0)
    model = ARCHITECTURES[name]().eval()
    lean = decoder_for(model)
    assert isinstance(lean, LeanDecoder)
    embed = model.get_input_embeddings()
    with torch.inference_mode():
        expected = _run(HFDecoder(model), embed, model.config.hidden_size)
        got = _run(lean, embed, model.config.hidden_size)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


def test_lora_projections_equal_peft_exactly(tiny_bundle: Path) -> None:
    """The bundle LLM is PEFT-wrapped: the lean forward's LoRA arithmetic is PEFT's, bit for
    bit, and a disabled adapter falls back to the module."""
    model = load_pandagpt(tiny_bundle)
    lean = decoder_for(model.llm)
    assert isinstance(lean, LeanDecoder)
    projections = lean._projections()
    modules = [lean.layers[0].self_attn.q_proj, lean.layers[1].self_attn.o_proj]
    x = torch.randn(3, 5, model.hidden_size)
    with torch.inference_mode():
        for projection, module in zip((projections[0][0], projections[1][3]), modules, strict=True):
            assert projection is not module  # the fast path was taken
            assert torch.equal(projection(x), module(x))
        expected = _run(HFDecoder(model.llm), model.embed_tokens, model.hidden_size)
        got = _run(lean, model.embed_tokens, model.hidden_size)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
        with model.llm.disable_adapter():
            assert lean._projections()[0][0] is modules[0]


def test_lean_decoding_equals_one_full_forward() -> None:
    """Independent of any cache: prefill, then token by token, gives the logits of running the
    whole sequence at once."""
    torch.manual_seed(0)
    model = _llama().eval()
    decoder = decoder_for(model)
    ids = torch.randint(0, SMALL["vocab_size"], (1, 12))
    embeds = model.get_input_embeddings()(ids)
    with torch.inference_mode():
        full = model(inputs_embeds=embeds).logits[0].float()
        batch = decoder.start([None], 0, 12)
        steps = [batch.forward(embeds[:, :8], torch.arange(8)[None], torch.ones(1, 8))[0]]
        for i in range(8, 12):
            mask = torch.ones(1, i + 1)
            steps.append(batch.forward(embeds[:, i : i + 1], torch.tensor([[i]]), mask)[0])
    torch.testing.assert_close(torch.stack(steps), full[7:], atol=2e-5, rtol=1e-5)


def test_buffers_grow_past_their_capacity() -> None:
    torch.manual_seed(0)
    model = _llama().eval()
    decoder = decoder_for(model)
    embeds = torch.randn(1, 6, SMALL["hidden_size"])
    with torch.inference_mode():
        small = decoder.start([None], 0, 2)
        small.forward(embeds[:, :3], torch.arange(3)[None], torch.ones(1, 3))
        got = small.forward(embeds[:, 3:], torch.arange(3, 6)[None], torch.ones(1, 6))
        roomy = decoder.start([None], 0, 6)
        expected = roomy.forward(embeds, torch.arange(6)[None], torch.ones(1, 6))
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


def test_other_architectures_use_the_hugging_face_forward() -> None:
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    assert isinstance(decoder_for(gpt2), HFDecoder)
    windowed = MistralForCausalLM(MistralConfig(**SMALL, sliding_window=16))
    assert isinstance(decoder_for(windowed), HFDecoder)


def test_engine_answers_alike_with_either_decoder(tiny_bundle: Path) -> None:
    """The PEFT-wrapped bundle LLM: batched, prefix-reusing generation gives the same tokens
    through the lean and the Hugging Face forward."""
    model = load_pandagpt(tiny_bundle)
    conversations = [
        [Message("human", "What is in this picture?")],
        [Message("human", "Describe a sunny beach in two sentences, please.")],
    ]
    params = SamplingParams(max_new_tokens=12)
    answers = []
    for decoder in (decoder_for(model.llm), HFDecoder(model.llm)):
        with GenerationEngine(model) as engine:
            engine._decoder = decoder
            first = engine.generate_batch(conversations, params)
            follow_up = [
                [*c, Message("assistant", r.text), Message("human", "And then?")]
                for c, r in zip(conversations, first, strict=True)
            ]
            second = engine.generate_batch(follow_up, params)
            assert all(r.usage.cached_tokens > 0 for r in second)
            answers.append([r.token_ids for r in first + second])
    assert isinstance(decoder_for(model.llm), LeanDecoder)
    assert answers[0] == answers[1]
