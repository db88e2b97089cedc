"""Token selection: greedy argmax, or logits processor -> temperature -> top-k -> top-p sampling.

One row's bad numbers never reach the others: a row whose logits are NaN, whose probabilities
are not finite, or whose logits processor raises gets that error in place of a token, and the
engine fails just that request. The checks ride on the device sync each step already pays
(``tolist`` of the argmax, ``int`` of a sample), so they add no host round trip; and a
non-finite distribution never reaches ``torch.multinomial`` (on CUDA that is a device-side
assert that poisons the whole process).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from langchain_pandagpt.generation.types import NonFiniteLogitsError, SamplingParams


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


def select_tokens(rows: Sequence[SamplingRow], logits: Tensor) -> list[int | Exception]:
    """One token per row of ``logits`` ``(rows, vocab)``, or the error that ends that row.

    Greedy rows without a logits processor share one argmax (one device sync per step); a NaN
    row comes back as index -1 from the same transfer.
    """
    values, indices = logits.max(-1)
    greedy = indices.masked_fill(values.isnan(), -1).tolist()
    tokens: list[int | Exception] = []
    for i, row in enumerate(rows):
        params = row.params
        try:
            if params.temperature == 0 and params.logits_processor is None:
                tokens.append(_checked(greedy[i], "the model's logits are NaN"))
            else:
                tokens.append(sample(row, logits[i]))
        except Exception as error:  # a failing logits processor ends its own row only
            tokens.append(error)
    return tokens


def sample(row: SamplingRow, logits: Tensor) -> int:
    """Logits processor, then greedy argmax or temperature -> top-k -> top-p sampling (the
    order of Hugging Face's warpers) for one row's ``(vocab,)`` logits."""
    params = row.params
    if params.logits_processor is not None:
        logits = params.logits_processor(list(row.generated), logits)
    if params.temperature == 0:
        value, index = logits.max(-1)
        return _checked(int(index.masked_fill(value.isnan(), -1)), "the logits are NaN")
    logits = logits / params.temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1:
        ordered, order = logits.sort()
        drop = ordered.softmax(-1).cumsum(-1) <= 1 - params.top_p
        drop[-1] = False
        logits = logits.index_fill(0, order[drop], float("-inf"))
    probs = logits.softmax(-1)
    finite = probs.isfinite().all()
    token = torch.multinomial(torch.where(finite, probs, 1.0), 1, generator=row.generator)
    return _checked(
        int(token.masked_fill(~finite, -1)),
        "the probabilities are not finite (NaN or infinite logits, or none above -inf)",
    )


def _checked(token: int, problem: str) -> int:
    if token < 0:
        raise NonFiniteLogitsError(
            f"cannot choose the next token: {problem}; this request stopped (with a "
            "logits_processor, check what it returns; else try a wider precision such as bf16 "
            "or fp32)"
        )
    return token
