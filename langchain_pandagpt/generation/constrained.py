"""Sampling parameters for an answer format: free text as asked, JSON under its grammar.

Shared by ``ChatPandaGPT`` and the server. A JSON answer (a schema, a tool call) decodes under
the schema's shared grammar (:func:`~langchain_pandagpt.generation.registry.shared_grammar`)
with a :class:`~langchain_pandagpt.structured.JsonLogitsProcessor`, ignores stop sequences
(they could cut the document) and gets at least the tokens its shortest form needs.

The JSON-ending rule lives here, next to the engine whose stopping it mirrors: the engine stops
on EOS; in reference fidelity it also stops on the ``##`` token and hides the last two tokens,
so a JSON answer there ends with a newline and EOS and never contains ``##``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_pandagpt.generation.engine import SamplingParams, reference_stop_id
from langchain_pandagpt.generation.registry import shared_grammar
from langchain_pandagpt.structured import JsonLogitsProcessor, TokenVocabulary
from langchain_pandagpt.structured.formats import AnswerFormat


def json_ending(
    tokenizer: Any, vocabulary: TokenVocabulary, fidelity: str
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Tokens that end a JSON answer (the last one stops the engine), and tokens it must not
    contain, for a prompt of ``fidelity``."""
    eos = tokenizer.eos_token_id
    if fidelity != "reference":
        return (eos,), ()
    if vocabulary.newline_id is None:
        raise ValueError("the tokenizer has no newline token to end JSON answers with")
    stop_id = reference_stop_id(tokenizer)
    return (vocabulary.newline_id, eos), (() if stop_id is None else (stop_id,))


def answer_sampling(
    answer: AnswerFormat,
    tokenizer: Any,
    vocab_size: int,
    fidelity: str,
    *,
    max_tokens: int,
    stop: Sequence[str] = (),
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
) -> SamplingParams:
    """The :class:`SamplingParams` of one answer of ``answer``'s format.

    ``vocab_size`` is the width of the model's logits. A JSON answer gets
    ``max(max_tokens, JsonLogitsProcessor.required_tokens(...))`` tokens and no stops.
    """
    common: dict[str, Any] = {"temperature": temperature, "top_p": top_p, "top_k": top_k}
    common["seed"] = seed
    if answer.schema is None:
        return SamplingParams(max_new_tokens=max_tokens, stop=tuple(stop), **common)
    grammar = shared_grammar(answer.schema)
    vocabulary = TokenVocabulary.for_tokenizer(tokenizer, vocab_size)
    end_ids, forbidden = json_ending(tokenizer, vocabulary, fidelity)
    budget = max(max_tokens, JsonLogitsProcessor.required_tokens(grammar, end_ids))
    processor = JsonLogitsProcessor(
        grammar,
        vocabulary,
        budget,
        end_ids=end_ids,
        optional=answer.optional,
        forbidden=forbidden,
    )
    return SamplingParams(max_new_tokens=budget, logits_processor=processor, **common)
