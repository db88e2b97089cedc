"""The model as training sees it: a loaded bundle where only LoRA and the projection learn.

Loading goes through :func:`load_pandagpt`, and the forward pass builds ``inputs_embeds`` with
the model's own :meth:`~PandaGPTModel.embed_tokens` and :meth:`~PandaGPTModel.encode_media`
(cached features enter as ``MediaItem(is_embedding=True)``), so training and inference share one
code path for tokens, media scale rules and the projection.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from peft import (
    LoraConfig,
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    prepare_model_for_kbit_training,
    set_peft_model_state_dict,
)
from torch import nn

from langchain_pandagpt.errors import CheckpointError
from langchain_pandagpt.generation.prompt import IGNORE_INDEX
from langchain_pandagpt.model.adapter import AdapterWeights
from langchain_pandagpt.model.bundle import load_pandagpt
from langchain_pandagpt.model.modeling import PandaGPTModel
from training.batches import Batch
from training.config import TrainConfig

QUANTIZED = ("int8", "nf4")


def load_for_training(config: TrainConfig, device: torch.device) -> PandaGPTModel:
    """The bundle with a fresh (or, with ``init_from_bundle``, its own) adapter, ready to train.

    A fresh adapter is initialised like the reference: PEFT's LoRA init (A Kaiming-uniform,
    B zero, so training starts from the base LLM) and PyTorch's default ``nn.Linear`` init for
    the projection, both drawn from the seeded global RNG. Trainable weights are kept in fp32
    (master weights under fp16/bf16 mixed precision); everything else is frozen.
    """
    model = load_pandagpt(config.bundle, precision=config.precision, device=device)
    llm = model.llm
    if config.precision in QUANTIZED:
        llm = prepare_model_for_kbit_training(llm, use_gradient_checkpointing=False)
    if not config.init_from_bundle:
        base = cast(PeftModel, llm).unload()
        lora = LoraConfig(
            r=config.lora.r,
            lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout,
            target_modules=list(config.lora.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        llm = get_peft_model(base, lora)
        model.projection.reset_parameters()
    model.llm = llm
    llm.requires_grad_(False)
    for name, module in llm.named_modules():
        if name.endswith((".lora_A.default", ".lora_B.default")):
            module.float().requires_grad_(True)
    model.projection.float().requires_grad_(True)
    if config.gradient_checkpointing:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    llm.train()
    model.projection.train()
    return model


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Mean next-token cross-entropy over labelled positions, their count and correct guesses.

    Same as Hugging Face's shifted loss (what the reference used), but a batch whose answers
    were all truncated away gives 0 instead of NaN.
    """
    logits = logits[:, :-1].float()
    targets = labels[:, 1:].to(logits.device)
    mask = targets != IGNORE_INDEX
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    count = int(mask.sum())
    correct = int(((logits.argmax(-1) == targets) & mask).sum())
    return total / max(count, 1), count, correct


class PandaGPTForTraining(nn.Module):
    """Registers the trainable parts as submodules, so accelerate, DDP, DeepSpeed or FSDP can
    wrap them, and computes the loss of a :class:`Batch` through the model's own code path."""

    def __init__(self, model: PandaGPTModel) -> None:
        super().__init__()
        self.llm = model.llm
        self.projection = model.projection
        self.model = model  # not an nn.Module: ImageBind stays out of the wrapped parameters

    def embed(self, batch: Batch) -> torch.Tensor:
        """``inputs_embeds`` of a batch: token embeddings, with media tokens summed into their
        positions (one item per position, or several for the reference's fused slot)."""
        embeds = self.model.embed_tokens(batch.input_ids)
        if not batch.media:
            return embeds
        rows, length, hidden = embeds.shape
        tokens = self.model.encode_media(batch.media)
        index = batch.media_index.to(embeds.device)
        flat = embeds.reshape(rows * length, hidden).index_fill(0, index, 0.0)
        return flat.index_add(0, index, tokens).reshape(rows, length, hidden)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, int, int]:
        output = self.llm(
            inputs_embeds=self.embed(batch),
            attention_mask=batch.attention_mask.to(self.model.device),
            use_cache=False,
        )
        return causal_lm_loss(output.logits, batch.labels)


def adapter_weights(module: PandaGPTForTraining, state: dict[str, torch.Tensor]) -> AdapterWeights:
    """The trainable weights in ``state`` (a state dict of ``module``) as adapter.py's type."""
    llm = cast(PeftModel, module.llm)
    llm_state = {k.removeprefix("llm."): v for k, v in state.items() if k.startswith("llm.")}
    lora = get_peft_model_state_dict(llm, state_dict=llm_state, save_embedding_layers=False)
    return AdapterWeights(
        config=cast(LoraConfig, llm.peft_config["default"]),
        lora={key: value.detach().cpu() for key, value in lora.items()},
        projection_weight=state["projection.weight"].detach().cpu(),
        projection_bias=state["projection.bias"].detach().cpu(),
    )


@torch.no_grad()
def load_adapter_weights(module: PandaGPTForTraining, weights: AdapterWeights) -> None:
    """Puts saved trainable weights back (resume); every LoRA tensor must be present."""
    result: Any = set_peft_model_state_dict(module.llm, weights.lora)  # torch's _IncompatibleKeys
    missing = [key for key in result.missing_keys if ".lora_" in key]
    if missing or result.unexpected_keys:
        problem = f"missing {missing[0]}" if missing else f"unexpected {result.unexpected_keys[0]}"
        raise CheckpointError(f"the checkpoint does not match this run's LoRA layers ({problem})")
    module.projection.weight.copy_(weights.projection_weight)
    module.projection.bias.copy_(weights.projection_bias)
