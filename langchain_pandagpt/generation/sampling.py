"""Token selection: greedy argmax, or logits processor -> temperature -> top-k -> top-p sampling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from langchain_pandagpt.generation.types import SamplingParams


class SamplingRow(Protocol):
    """What token selection needs of a request."""

    params: SamplingParams
    generated: list[int]
    generator: torch.Generator | None


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """The random source of a sampling request (``None`` when greedy): seeded from
    ``params.seed``, else from the OS."""
    if params.temperature == 0:
        return None
    generator = torch.Generator(device=device)
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    return generator


def select_tokens(rows: Sequence[SamplingRow], logits: Tensor) -> list[int]:
    """One token per row: greedy rows share one argmax (one device sync per step)."""
    greedy = logits.argmax(-1).tolist()
    return [
        greedy[i]
        if row.params.temperature == 0 and row.params.logits_processor is None
        else sample(row, logits[i])
        for i, row in enumerate(rows)
    ]


def sample(row: SamplingRow, logits: Tensor) -> int:
    """Logits processor, then greedy argmax or temperature -> top-k -> top-p sampling (the
    order of Hugging Face's warpers)."""
    params = row.params
    if params.logits_processor is not None:
        logits = params.logits_processor(list(row.generated), logits)
    if params.temperature == 0:
        return int(logits.argmax())
    logits = logits / params.temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1:
        ordered, order = logits.sort()
        drop = ordered.softmax(-1).cumsum(-1) <= 1 - params.top_p
        drop[-1] = False
        logits = logits.index_fill(0, order[drop], float("-inf"))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=row.generator))
