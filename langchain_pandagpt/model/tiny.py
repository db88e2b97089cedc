"""A complete, tiny, random PandaGPT bundle, made in seconds and offline: the CI fixture.

Every part has the real format and layout, only small: a LLaMA in Hugging Face format with a
LLaMA-style tokenizer (byte-fallback BPE trained here on a built-in corpus; ``<unk>``, ``<s>``,
``</s>`` are ids 0-2 and ``[PAD]`` is the last id, as in Vicuna v0), an ImageBind with all six
towers in the official key layout, and an adapter in the released ``pytorch_model.pt`` layout.
Real bundles differ only in size (e.g. ImageBind's width is 1024, here 32).

Weights are drawn from a seeded generator and scaled so that greedy decoding gives varied
output and the adapter visibly matters (LoRA B is non-zero). The same seed gives byte-identical
files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Final, Literal

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer, PreTrainedTokenizerBase

from langchain_pandagpt.imagebind.checkpoint import save_imagebind_safetensors
from langchain_pandagpt.imagebind.model import ImageBindConfig, ImageBindModel
from langchain_pandagpt.model.adapter import (
    TARGET_MODULES,
    AdapterWeights,
    reference_lora_config,
    write_peft_adapter,
    write_reference_checkpoint,
)
from langchain_pandagpt.model.manifest import AdapterSpec, BundleManifest
from langchain_pandagpt.model.quiet import quiet_loading

TINY_IMAGEBIND: Final = ImageBindConfig.tiny()
TINY_LORA_RANK: Final = 8
#: Cap on what BPE learns (specials and alphabet included; the corpus runs out of merges at
#: about 550). The 256 byte tokens and ``[PAD]`` come on top.
TINY_BPE_VOCAB: Final = 700
SPECIAL_TOKENS: Final = ("<unk>", "<s>", "</s>")
PAD_TOKEN: Final = "[PAD]"

#: Training text for the tiny tokenizer: PandaGPT's prompt strings, answers like the ones the
#: model gives, and plain English, so prompts tokenize into a few sensible pieces.
_CORPUS: Final = (
    "### Human: <Img>",
    "</Img> What is in this image?\n### Assistant: A cat is sleeping on a red sofa.\n###",
    "</Img> Describe the picture in detail.\n### Assistant: The photo shows a busy street at "
    "night, with cars, bright shop windows and people walking under umbrellas.\n###",
    "</Img> What can you hear?\n### Assistant: A dog is barking while birds sing in the "
    "background.\n###",
    "</Img> What happens in the video?\n### Assistant: A man rides a bicycle along the beach "
    "and waves at the camera.\n###",
    "</Img> Is it warm or cold in this thermal image?\n### Assistant: The person is warm and "
    "the window behind them is cold.\n###",
    " Human: Thank you! Can you tell me more?\n### Assistant: Of course. The scene looks calm, "
    "and the light suggests early morning.\n###",
    " Human: Write a short poem about it.\n### Assistant: Soft paws, warm light, a quiet room "
    "at rest tonight.\n###",
    "The quick brown fox jumps over the lazy dog.",
    "A picture is worth a thousand words, and a sound can tell a story too.",
    "There are two people, three chairs and a small table in the room.",
    "The image shows a mountain lake with trees, snow and a clear blue sky.",
    "She is holding a cup of coffee and reading a book by the window.",
    "The audio clip contains music, laughter and the sound of rain on the roof.",
    "In the depth map, the closest object is the chair and the wall is far away.",
    "The motion data suggests that the person is walking, then running up the stairs.",
    "Answer the question about the image as helpfully and honestly as you can.",
    "Yes, there is a bird on the branch. No, the car is not moving.",
    "What color is the ball? The ball is yellow and it is on the green grass.",
    "How many animals are there? I can see four animals: two cats, a dog and a horse.",
)


def build_tiny_tokenizer(*, pad: bool = True) -> PreTrainedTokenizerBase:
    """A LLaMA-style tokenizer trained on :data:`_CORPUS` (deterministic, offline, ~1 s).

    Like LLaMA's: SentencePiece-style ``▁`` word marks, BPE merges that never cross words or
    newlines, byte fallback for anything unseen (so every string round-trips), ids 0-2 for
    ``<unk> <s> </s>``, 3-258 for the byte tokens ``<0x00>``..``<0xFF>``, BOS added by
    ``encode``. ``pad=False`` leaves out ``[PAD]``: a LLaMA-1-like base for ``apply-delta``.
    """
    trainer_tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
            pre_tokenizers.Split("\n", behavior="isolated"),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_BPE_VOCAB, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    trainer_tokenizer.train_from_iterator(_CORPUS, trainer)
    learned = json.loads(trainer_tokenizer.to_str())["model"]
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"<0x{byte:02X}>": len(SPECIAL_TOKENS) + byte for byte in range(256)})
    for token, _ in sorted(learned["vocab"].items(), key=lambda item: item[1]):
        if token != "\n":  # newlines stay byte tokens (<0x0A>), as in LLaMA
            vocab.setdefault(token, len(vocab))
    merges = [tuple(merge) for merge in learned["merges"]]
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)
    if pad:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer


def llama_config_for(
    tokenizer: PreTrainedTokenizerBase,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
) -> LlamaConfig:
    """A LLaMA-1/Vicuna-v0-style config (untied head, RMSNorm eps 1e-6, 2048 positions) sized to
    ``tokenizer``; the defaults are the tiny bundle's, benchmarks pass larger sizes."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _normal(shape: tuple[int, ...], std: float, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator) * std


@torch.no_grad()
def build_tiny_llm(
    tokenizer: PreTrainedTokenizerBase, generator: torch.Generator
) -> LlamaForCausalLM:
    """A 2-layer LLaMA sized to ``tokenizer``, with weights drawn from ``generator``.

    Unit-variance embeddings and ``1/sqrt(fan_in)`` projections (instead of HF's 0.02) keep
    the residual stream and logits lively, so greedy decoding does not collapse to one token.
    """
    config = llama_config_for(tokenizer)
    with torch.random.fork_rng(devices=[]):  # HF's own init uses the global RNG: leave it alone
        model = LlamaForCausalLM(config)
    for name, param in model.named_parameters():
        if param.ndim == 1:  # RMSNorm gains
            param.fill_(1.0)
        elif name.endswith("embed_tokens.weight"):
            param.copy_(_normal(tuple(param.shape), 1.0, generator))
        else:
            param.copy_(_normal(tuple(param.shape), param.shape[1] ** -0.5, generator))
    return model.eval()


def build_tiny_adapter(
    llm: LlamaForCausalLM, imagebind_width: int, generator: torch.Generator
) -> AdapterWeights:
    """Random LoRA (non-zero B, so it changes the output) and projection, rounded to fp16."""
    rank = TINY_LORA_RANK
    lora = {}
    for name, module in llm.named_modules():
        if isinstance(module, nn.Linear) and name.rpartition(".")[2] in TARGET_MODULES:
            fan_in, fan_out = module.in_features, module.out_features
            prefix = f"base_model.model.{name}"
            lora[f"{prefix}.lora_A.weight"] = _normal((rank, fan_in), fan_in**-0.5, generator)
            lora[f"{prefix}.lora_B.weight"] = _normal((fan_out, rank), rank**-0.5, generator)
    hidden = llm.config.hidden_size
    return AdapterWeights(
        config=reference_lora_config(rank),
        lora={key: value.half() for key, value in lora.items()},
        # ImageBind embeddings have unit norm: unit weights give media tokens the size of words.
        projection_weight=_normal((hidden, imagebind_width), 1.0, generator).half(),
        projection_bias=_normal((hidden,), 0.1, generator).half(),
    )


def create_tiny_checkpoint(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    *,
    adapter_format: Literal["reference", "peft"] = "reference",
) -> Path:
    """Writes a complete random bundle to ``out_dir`` and returns its path.

    ``adapter_format="reference"`` writes the released ``pytorch_model.pt`` layout;
    ``"peft"`` writes ``adapter/`` + ``projection.safetensors`` instead.
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)

    tokenizer = build_tiny_tokenizer()
    llm = build_tiny_llm(tokenizer, generator)
    with quiet_loading():
        tokenizer.save_pretrained(root / "llm")
        llm.save_pretrained(root / "llm")

    imagebind = ImageBindModel(TINY_IMAGEBIND)
    imagebind.init_random_weights(generator)
    save_imagebind_safetensors(imagebind, root / "imagebind.safetensors")

    adapter = build_tiny_adapter(llm, TINY_IMAGEBIND.out_embed_dim, generator)
    vocab_size = llm.config.vocab_size
    if adapter_format == "reference":
        write_reference_checkpoint(adapter, root / "pytorch_model.pt")
        spec = AdapterSpec(format="reference", path="pytorch_model.pt", vocab_size=vocab_size)
    else:
        write_peft_adapter(adapter, root / "adapter", root / "projection.safetensors")
        spec = AdapterSpec(
            format="peft",
            path="adapter",
            projection="projection.safetensors",
            vocab_size=vocab_size,
        )
    BundleManifest(name=f"tiny-pandagpt-seed{seed}", adapter=spec).write(root)
    return root
