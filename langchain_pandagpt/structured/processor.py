"""Token masks and the logits processor that keeps an answer inside its schema and budget.

Masks come from a walk over the vocabulary's byte trie, cached per automaton state in a
:class:`MaskTable` that belongs to its grammar (``grammar.mask_tables``), so the registry's LRU
of grammars frees them too. Inside strings, tokens without quotes, backslashes or control
characters are allowed in bulk.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
from torch import Tensor

from langchain_pandagpt.structured.grammar import Config, JsonGrammar, State, in_string_body
from langchain_pandagpt.structured.vocabulary import TokenVocabulary, TrieNode

#: Cached per-state token walks (each up to a vocabulary of ids) per grammar and vocabulary.
_WALK_CACHE_LIMIT = 4096


class MaskTable:
    """Allowed tokens per automaton state for one grammar and vocabulary (cached)."""

    def __init__(self, grammar: JsonGrammar, vocabulary: TokenVocabulary) -> None:
        self.grammar = grammar
        self.vocabulary = vocabulary
        self._walks: dict[tuple[State, bool], tuple[Tensor, Tensor]] = {}
        self._lock = threading.Lock()

    def allowed(self, state: State, budget: float) -> Tensor:
        """Tokens after which some configuration of ``state`` completes within ``budget`` bytes."""
        mask = torch.zeros(self.vocabulary.size, dtype=torch.bool)
        in_string = in_string_body(state)
        if in_string:
            for config in state:
                self._allow_plain(mask, config, budget)
        ids, costs = self._walk(state, in_string)
        mask[ids[costs <= budget]] = True
        return mask

    def _allow_plain(self, mask: Tensor, config: Config, budget: float) -> None:
        """Plain tokens (no quote, backslash or control character) inside a string."""
        _, node, _, count, _ = config[-1]
        cost = self.grammar.cost(config)
        missing = max(0, node.min_len - count) if node.tracks_length else 0
        excess = cost - budget  # how many characters the token must fill of ``missing``
        if excess > missing:
            return
        low = max(1, int(excess))
        plain = self.vocabulary.plain_chars
        fits = plain >= low
        if node.max_len is not None:
            fits &= plain <= node.max_len - count
        mask |= fits

    def _walk(self, state: State, in_string: bool) -> tuple[Tensor, Tensor]:
        key = (state, in_string)
        found = self._walks.get(key)
        if found is None:
            trie = self.vocabulary.escape_trie if in_string else self.vocabulary.trie
            found = self._token_costs(trie, state)
            with self._lock:
                if len(self._walks) >= _WALK_CACHE_LIMIT:
                    self._walks.clear()
                self._walks[key] = found
        return found

    def _token_costs(self, trie: TrieNode, state: State) -> tuple[Tensor, Tensor]:
        """Every token that ``state`` can read, with its cheapest completion afterwards."""
        grammar = self.grammar
        ids: list[int] = []
        costs: list[float] = []
        pending = [(trie, state)]
        while pending:
            node, current = pending.pop()
            for byte, child in node.children.items():
                after = grammar.step_state(current, byte)
                if not after:
                    continue
                if child.tokens:
                    cost = grammar.state_cost(after)
                    ids.extend(child.tokens)
                    costs.extend([cost] * len(child.tokens))
                if child.children:
                    pending.append((child, after))
        return torch.tensor(ids, dtype=torch.long), torch.tensor(costs, dtype=torch.float64)


_TABLE_LOCK = threading.Lock()


def _mask_table(grammar: JsonGrammar, vocabulary: TokenVocabulary) -> MaskTable:
    with _TABLE_LOCK:
        table: MaskTable | None = grammar.mask_tables.get(vocabulary)
        if table is None:
            table = grammar.mask_tables[vocabulary] = MaskTable(grammar, vocabulary)
    return table


class JsonLogitsProcessor:
    """Constrains one request to a document of ``grammar`` that ends within its budget.

    Pass it as ``SamplingParams.logits_processor`` together with the same ``max_new_tokens``
    (at least :meth:`required_tokens`). After the document it forces ``end_ids``, whose last
    id must stop the engine (EOS; the chat model puts a filler token first where the engine
    hides the last two tokens). ``forbidden`` ids never appear (stop tokens of the engine).
    With ``optional`` the model may answer in plain text instead: the answer is JSON exactly
    when its first non-space character is ``{`` (``tool_choice="auto"``).
    """

    def __init__(
        self,
        grammar: JsonGrammar,
        vocabulary: TokenVocabulary,
        max_new_tokens: int,
        *,
        end_ids: Sequence[int],
        optional: bool = False,
        forbidden: Sequence[int] = (),
    ) -> None:
        if not end_ids:
            raise ValueError("end_ids must name at least the EOS token")
        self._grammar = grammar
        self._table = _mask_table(grammar, vocabulary)
        self._vocabulary = vocabulary
        self._max_new_tokens = max_new_tokens
        self._end_ids = tuple(end_ids)
        self._forbidden = torch.tensor(sorted(set(forbidden)), dtype=torch.long)
        self._state = grammar.start()
        self._seen = 0
        self._ended = 0
        self._prefix = b""
        self.mode = "undecided" if optional else "json"

    @staticmethod
    def required_tokens(grammar: JsonGrammar, end_ids: Sequence[int]) -> int:
        """The smallest ``max_new_tokens`` that fits the shortest document and ``end_ids``."""
        return grammar.min_bytes + len(end_ids)

    def __call__(self, generated: list[int], logits: Tensor) -> Tensor:
        self._consume(generated)
        if self.mode == "text":
            return logits
        if logits.shape[-1] != self._vocabulary.size:
            raise ValueError(
                f"logits have {logits.shape[-1]} entries but the vocabulary was built for "
                f"{self._vocabulary.size}"
            )
        allowed = self._allowed(self._max_new_tokens - len(generated))
        return logits.masked_fill(~allowed.to(logits.device), float("-inf"))

    def _consume(self, generated: list[int]) -> None:
        for index in range(self._seen, len(generated)):
            self._consume_one(generated[index], self._max_new_tokens - index - 1)
        self._seen = len(generated)

    def _consume_one(self, token: int, left: int) -> None:
        if self._ended or self.mode == "text":
            self._ended += bool(self._ended)
            return
        grammar = self._grammar
        if token == self._end_ids[0] and grammar.state_cost(self._state) == 0:
            self._ended = 1
            return
        data = self._vocabulary.token_bytes[token] if token < self._vocabulary.size else None
        if self.mode == "undecided":
            if data is None:
                self.mode = "text"
                return
            self._prefix += data
            start = self._prefix.lstrip(b" ")[:1]
            if start:
                self.mode = "json" if start == b"{" else "text"
            if self.mode == "text":
                return
        if data is None:
            raise RuntimeError(f"token {token} was sampled although the JSON grammar masked it")
        budget = left - len(self._end_ids)
        state = grammar.advance(self._state, data)
        self._state = tuple(c for c in state if grammar.cost(c) <= budget)
        if not self._state:
            raise RuntimeError(f"token {token} ({data!r}) left no way to finish the JSON document")

    def _allowed(self, remaining: int) -> Tensor:
        vocabulary = self._vocabulary
        if self._ended:
            mask = torch.zeros(vocabulary.size, dtype=torch.bool)
            mask[self._end_ids[min(self._ended, len(self._end_ids) - 1)]] = True
            return mask
        mask = self._table.allowed(self._state, remaining - 1 - len(self._end_ids))
        mask[self._forbidden] = False
        if self._grammar.state_cost(self._state) == 0 and remaining >= len(self._end_ids):
            mask[self._end_ids[0]] = True
        if self.mode == "undecided":
            mask |= vocabulary.text_start
        if not mask.any():
            raise RuntimeError("the JSON grammar allows no token here (this is a bug)")
        return mask
