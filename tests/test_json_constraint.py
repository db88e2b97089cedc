"""The JSON-schema automaton behind ChatPandaGPT's structured output and tool calls: what it
accepts, the exactness of its completion costs, token bytes, and the logits processor."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from fractions import Fraction
from itertools import product
from typing import Any

import jsonschema
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from tokenizers import decoders as token_decoders
from transformers import PreTrainedTokenizerFast

from langchain_pandagpt.model.tiny import build_tiny_tokenizer
from langchain_pandagpt.structured import JsonGrammar, JsonLogitsProcessor, TokenVocabulary
from langchain_pandagpt.structured.grammar import State
from langchain_pandagpt.structured.vocabulary import tokenizer_token_bytes

SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 3},
            "n": {"type": "integer", "minimum": -2, "maximum": 12},
            "tags": {"type": "array", "items": {"enum": ["a", "bc"]}, "maxItems": 2},
            "ok": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
        },
        "required": ["name", "n"],
    },
    {"type": "array", "prefixItems": [{"const": 1}, {"type": "string"}], "minItems": 2},
    {"type": "object", "additionalProperties": {"type": "integer"}},
    {"type": "object", "properties": {}},
    {
        "$defs": {
            "Tree": {
                "type": "object",
                "properties": {
                    "v": {"type": "integer"},
                    "kids": {"type": "array", "items": {"$ref": "#/$defs/Tree"}},
                },
                "required": ["v", "kids"],
            }
        },
        "$ref": "#/$defs/Tree",
    },
    {
        "allOf": [
            {"properties": {"a": {"type": "number"}}, "required": ["a"]},
            {"properties": {"b": {"type": "string", "minLength": 2}}, "required": ["b"]},
        ]
    },
    {"type": ["string", "null"]},
    {"type": "number", "exclusiveMinimum": 0.5, "maximum": 1},
]


def feed(grammar: JsonGrammar, text: str | bytes) -> State:
    state = grammar.start()
    return grammar.advance(state, text.encode() if isinstance(text, str) else text)


def accepts(grammar: JsonGrammar, text: str | bytes) -> bool:
    state = feed(grammar, text)
    return bool(state) and grammar.state_cost(state) == 0


@pytest.mark.parametrize(
    ("schema", "valid", "invalid"),
    [
        (
            SCHEMAS[0],
            [
                '{"name":"abc","n":12}',
                ' {"name":"","n":-2,"tags":["bc","a"],"ok":null}',
                '{"name":"\\"é","n":0,"ok":true}',
            ],
            [
                '{"n":1,"name":"a"}',
                '{"name":"abcd","n":1}',
                '{"name":"a","n":13}',
                '{"name":"a","n":01}',
                '{"name":"a","n":1,"tags":["a","a","a"]}',
                '{"name":"a"}',
                '{"name":"a","n":1} ',
                '{"name":"a\nb","n":1}',
                '{"name": "a","n":1}',
            ],
        ),
        (SCHEMAS[1], ['[1,""]', '[1,"x"]'], ["[1]", '[2,"x"]', '[1,"x",3]']),
        (SCHEMAS[2], ["{}", '{"a":1,"":-3}'], ['{"a":"x"}', '{"a":1.5}']),
        (SCHEMAS[3], ["{}"], ['{"a":1}']),
        (SCHEMAS[4], ['{"v":1,"kids":[{"v":2,"kids":[]}]}'], ['{"v":1}', '{"v":1,"kids":[{}]}']),
        (SCHEMAS[5], ['{"a":0.25,"b":"xy"}'], ['{"a":1,"b":"x"}', '{"b":"xy"}']),
        (SCHEMAS[6], ['"x"', "null"], ["nul", "1"]),
        (SCHEMAS[7], ["1", "0.51", "0.6"], ["0.5", "1.01", "0.50", "2", "-1"]),
    ],
)
def test_the_automaton_accepts_exactly_the_schema(
    schema: dict[str, Any], valid: list[str], invalid: list[str]
) -> None:
    grammar = JsonGrammar(schema)
    for text in valid:
        assert accepts(grammar, text), text
        jsonschema.validate(json.loads(text), schema)
    for text in invalid:
        assert not accepts(grammar, text), text


def test_utf8_is_checked_byte_by_byte() -> None:
    grammar = JsonGrammar({"type": "string"})
    assert accepts(grammar, '"日本"'.encode())
    for bad in (
        b'"\xe0\x80\x80"',
        b'"\xed\xa0\x80"',
        b'"\xc0\xaf"',
        b'"\x80"',
        b'"\xf4\x90\x80\x80"',
    ):
        assert not feed(grammar, bad), bad


def _number_strings(max_length: int) -> Iterator[str]:
    for length in range(1, max_length + 1):
        for chars in product("-0123456789.", repeat=length):
            yield "".join(chars)


@pytest.mark.parametrize(
    "bounds",
    [
        {"type": "integer", "minimum": -12, "maximum": 7},
        {"type": "integer", "exclusiveMinimum": -3, "exclusiveMaximum": 40},
        {"type": "number", "minimum": -1.5, "exclusiveMaximum": 2.25},
        {"type": "number", "exclusiveMinimum": 0, "maximum": 0.1},
        {"type": "number", "minimum": 95},
    ],
)
def test_number_bounds_hold_for_every_short_number(bounds: dict[str, Any]) -> None:
    grammar = JsonGrammar(bounds)
    number = re.compile(
        r"-?(0|[1-9][0-9]*)(\.[0-9]+)?" if bounds["type"] == "number" else r"-?(0|[1-9][0-9]*)"
    )
    low = bounds.get("minimum", bounds.get("exclusiveMinimum"))
    high = bounds.get("maximum", bounds.get("exclusiveMaximum"))
    for text in _number_strings(4):
        value = Fraction(text) if number.fullmatch(text) else None
        within = value is not None and (
            (low is None or value > low or ("minimum" in bounds and value == low))
            and (high is None or value < high or ("maximum" in bounds and value == high))
        )
        assert accepts(grammar, text) == within, text


DOCUMENTS = [
    '{"name":"ab","n":3,"tags":["a"]}',
    '[1,"x"]',
    '{"k":7}',
    "{}",
    '{"v":1,"kids":[{"v":2,"kids":[]}]}',
    '{"a":0.5,"b":"xyz"}',
    '"ab"',
    "0.75",
]


def _states_along(grammar: JsonGrammar, document: str) -> Iterator[State]:
    state = grammar.start()
    yield state
    for byte in document.encode():
        state = grammar.step_state(state, byte)
        yield state


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_every_cost_is_achieved_by_a_valid_completion(index: int) -> None:
    """From each state along a document, ``cost`` bytes (each lowering the cost by one) give a
    valid document: the promise that lets the processor always finish in budget."""
    schema, grammar = SCHEMAS[index], JsonGrammar(SCHEMAS[index])
    document = DOCUMENTS[index].encode()
    for prefix_length, state in enumerate(_states_along(grammar, DOCUMENTS[index])):
        text = document[:prefix_length]
        while (cost := grammar.state_cost(state)) > 0:
            byte = next(
                b
                for b in range(256)
                if grammar.state_cost(grammar.step_state(state, b)) == cost - 1
            )
            state = grammar.step_state(state, byte)
            text += bytes((byte,))
        jsonschema.validate(json.loads(text), schema)


def _shortest_completion(grammar: JsonGrammar, state: State, limit: int) -> int | None:
    """Breadth-first search over all bytes for the shortest completion (``None``: > limit)."""
    frontier = {state}
    for depth in range(limit + 1):
        if any(grammar.state_cost(current) == 0 for current in frontier):
            return depth
        frontier = {
            a for current in frontier for b in range(256) if (a := grammar.step_state(current, b))
        }
    return None


@pytest.mark.parametrize("index", [0, 1, 3, 6])  # schemas whose search space stays small
def test_costs_are_exact(index: int) -> None:
    grammar = JsonGrammar(SCHEMAS[index])
    for state in _states_along(grammar, DOCUMENTS[index]):
        cost = grammar.state_cost(state)
        assert _shortest_completion(grammar, state, int(cost)) == cost


def test_unusable_schemas_fail_at_compile_time() -> None:
    with pytest.raises(ValueError, match="admits no value"):
        JsonGrammar(
            {
                "type": "object",
                "properties": {"a": {"type": "string", "minLength": 3, "maxLength": 2}},
                "required": ["a"],
            }
        )
    with pytest.raises(ValueError, match="only local"):
        JsonGrammar({"$ref": "https://example.com/schema.json"})
    with pytest.raises(ValueError, match="does not resolve"):
        JsonGrammar({"$ref": "#/$defs/Missing"})
    with pytest.raises(ValueError, match="unknown JSON schema type"):
        JsonGrammar({"type": "date"})


# --------------------------------------------------------------------------------------------
# Tokens and the logits processor
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tiny_tokenizer()


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE tokenizer, trained on the spot."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = token_decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(['{"name": "café", "n": 12}', "日本語のテキスト"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|end|>")


@pytest.mark.parametrize("kind", ["sentencepiece", "byte_level"])
def test_token_bytes_concatenate_to_the_decoded_text(tokenizer: Any, kind: str) -> None:
    tok = tokenizer if kind == "sentencepiece" else byte_level_tokenizer()
    pieces = tokenizer_token_bytes(tok)
    assert all(pieces[i] is None for i in tok.all_special_ids)
    generator = torch.Generator().manual_seed(0)
    usable = [i for i, data in enumerate(pieces) if data and _is_utf8(data)]
    for _ in range(300):
        ids = [usable[int(j)] for j in torch.randint(len(usable), (6,), generator=generator)]
        text = b"".join(pieces[i] or b"" for i in ids).decode()
        decoded = tok.decode(ids, clean_up_tokenization_spaces=False)
        assert decoded in (text, text[1:]), (ids, decoded, text)  # LLaMA strips one leading space


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def run(
    processor: JsonLogitsProcessor, vocabulary: TokenVocabulary, budget: int, bias: torch.Tensor
) -> list[int]:
    """Greedy decoding of random logits (plus ``bias``) through ``processor``."""
    generator = torch.Generator().manual_seed(1)
    generated: list[int] = []
    while len(generated) < budget:
        logits = torch.randn(vocabulary.size, generator=generator) + bias
        token = int(processor(list(generated), logits).argmax())
        generated.append(token)
        if token == vocabulary.eos_id:
            break
    return generated


def test_optional_answers_are_json_or_text_by_their_first_character(tokenizer: Any) -> None:
    vocabulary = TokenVocabulary.for_tokenizer(tokenizer)
    grammar = JsonGrammar(SCHEMAS[0])
    eos = (tokenizer.eos_token_id,)
    for first, mode in ((b"{", "json"), (b"A", "text")):
        bias = torch.zeros(vocabulary.size)
        bias[vocabulary.token_bytes.index(first)] = 1e4
        processor = JsonLogitsProcessor(grammar, vocabulary, 60, end_ids=eos, optional=True)
        tokens = run(processor, vocabulary, 60, bias)
        assert processor.mode == mode
        if mode == "json":
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            jsonschema.validate(json.loads(text), SCHEMAS[0])
        else:
            raw = torch.randn(vocabulary.size)
            assert processor(tokens, raw) is raw  # text answers are not constrained


def test_forbidden_tokens_never_appear_and_end_ids_close_the_answer(tokenizer: Any) -> None:
    vocabulary = TokenVocabulary.for_tokenizer(tokenizer)
    grammar = JsonGrammar(
        {"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]}
    )
    hash_token = vocabulary.token_bytes.index(b"#")
    assert vocabulary.newline_id is not None
    end = (vocabulary.newline_id, tokenizer.eos_token_id)
    bias = torch.zeros(vocabulary.size)
    bias[hash_token] = 50.0
    processor = JsonLogitsProcessor(grammar, vocabulary, 30, end_ids=end, forbidden=[hash_token])
    tokens = run(processor, vocabulary, 30, bias)
    assert hash_token not in tokens and tokens[-2:] == list(end) and len(tokens) <= 30
    json.loads(tokenizer.decode(tokens[:-2], skip_special_tokens=True))
    assert JsonLogitsProcessor.required_tokens(grammar, end) == len('{"s":""}') + 2
