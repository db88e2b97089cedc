"""The grammar of one schema: a pushdown automaton over UTF-8 bytes with completion costs.

A configuration is a stack of frames; alternatives (``anyOf``, optional properties, a number
that may end or go on) are a set of configurations, the *state*. :meth:`JsonGrammar.cost` of a
configuration is the exact length in bytes of its shortest completion (see
:mod:`~langchain_pandagpt.structured.costs`). Steps and costs are cached per grammar.

Output form: compact JSON (leading spaces allowed, no other whitespace), object keys in schema
order, only two-character escapes, numbers without exponents.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

from langchain_pandagpt.structured.costs import array_cost, number_extra, object_cost, settle_costs
from langchain_pandagpt.structured.schema import (
    INF,
    ArrayNode,
    LiteralNode,
    Node,
    NumberNode,
    ObjectNode,
    StringNode,
    UnionNode,
    compile_schema,
    walk_nodes,
)

if TYPE_CHECKING:
    from langchain_pandagpt.structured.vocabulary import TokenVocabulary

#: Cached automaton steps and costs per grammar before the caches are reset.
_CACHE_LIMIT = 200_000
_ESCAPABLE = frozenset(b'"\\/bfnrt')
#: Allowed first continuation byte after lead bytes with a narrower range (RFC 3629).
_FIRST_CONTINUATION = {
    0xE0: (0xA0, 0xBF),
    0xED: (0x80, 0x9F),
    0xF0: (0x90, 0xBF),
    0xF4: (0x80, 0x8F),
}
_NUMBER_BYTES = frozenset(b"-.0123456789")

# Frame kinds. Frames are tuples ``(kind, node, ...)``; a configuration is a tuple of frames
# (the stack, root first) and a state is a tuple of configurations.
_ROOT, _STR, _LIT, _NUM, _ARR, _OBJ = range(6)
Frame: TypeAlias = tuple[Any, ...]
Config: TypeAlias = tuple[Frame, ...]
State: TypeAlias = tuple[Config, ...]
#: The key of an object whose keys are free (``additionalProperties`` only).
_FREE_KEY = StringNode()
_FREE_KEY.min_bytes = 2


class JsonGrammar:
    """A compiled JSON schema and its byte automaton (thread-safe; share one per schema)."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = schema
        self.root = compile_schema(schema)
        nodes = walk_nodes(self.root)
        settle_costs(nodes)
        if self.root.min_bytes == INF:
            raise ValueError("the JSON schema admits no value that this decoder can write")
        self._steps: dict[tuple[Config, int], tuple[Config, ...]] = {}
        self._costs: dict[Config, float] = {}
        self._numbers: dict[tuple[int, bytes], float] = {}
        self._lock = threading.Lock()
        #: Token masks per vocabulary, owned by the grammar so that dropping the grammar (the
        #: registry's LRU) frees them; weak on the vocabulary, which its tokenizer owns. The
        #: values are ``processor.MaskTable``s (typed there: the processor builds on this module).
        self.mask_tables: weakref.WeakKeyDictionary[TokenVocabulary, Any] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def min_bytes(self) -> int:
        """Length of the shortest document."""
        return int(self.root.min_bytes)

    def start(self) -> State:
        return (((_ROOT, self.root, 0),),)

    def advance(self, state: State, data: bytes) -> State:
        """The configurations after reading ``data`` from any of ``state``."""
        for byte in data:
            state = self.step_state(state, byte)
            if not state:
                break
        return state

    def step_state(self, state: State, byte: int) -> State:
        if len(state) == 1:
            return self.step(state[0], byte)
        return tuple(dict.fromkeys(c for config in state for c in self.step(config, byte)))

    def step(self, config: Config, byte: int) -> tuple[Config, ...]:
        key = (config, byte)
        found = self._steps.get(key)
        if found is None:
            found = tuple(dict.fromkeys(self._step(config, byte)))
            self._remember(self._steps, key, found)
        return found

    def cost(self, config: Config) -> float:
        """Bytes of the shortest completion of ``config``."""
        found = self._costs.get(config)
        if found is None:
            found = sum(self._frame_cost(frame) for frame in config)
            self._remember(self._costs, config, found)
        return found

    def state_cost(self, state: State) -> float:
        return min((self.cost(config) for config in state), default=INF)

    def _remember(self, cache: dict[Any, Any], key: Any, value: Any) -> None:
        with self._lock:
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[key] = value

    # -- automaton ------------------------------------------------------------------------------

    def _enter(self, below: Config, node: Node) -> list[Config]:
        """Configurations that start ``node`` on top of ``below`` (nothing read yet)."""
        leaves = node.leaves if isinstance(node, UnionNode) else (node,)
        return [(*below, _initial_frame(leaf)) for leaf in leaves if leaf.min_bytes < INF]

    def _enter_and_step(self, below: Config, node: Node, byte: int) -> list[Config]:
        return [c for config in self._enter(below, node) for c in self.step(config, byte)]

    def _finish(self, below: Config) -> Config:
        """``below`` after the value on top of it (now popped) is complete."""
        parent = below[-1]
        kind, node = parent[0], parent[1]
        if kind == _ROOT:
            frame: Frame = (_ROOT, node, 3)
        elif kind == _ARR:
            frame = (_ARR, node, 3, parent[3] + 1)
        elif parent[2] == 5:  # a free key is done: expect ":"
            frame = (_OBJ, node, 3, parent[3], 0)
        else:
            frame = (_OBJ, node, 8, parent[3], 0)
        return (*below[:-1], frame)

    def _step(self, config: Config, byte: int) -> list[Config]:
        frame = config[-1]
        kind = frame[0]
        if kind == _STR:
            return self._step_string(config, frame, byte)
        if kind == _OBJ:
            return self._step_object(config, frame, byte)
        if kind == _ARR:
            return self._step_array(config, frame, byte)
        if kind == _NUM:
            return self._step_number(config, frame, byte)
        if kind == _LIT:
            return self._step_literal(config, frame, byte)
        return self._step_root(config, frame, byte)

    def _step_root(self, config: Config, frame: Frame, byte: int) -> list[Config]:
        if frame[2] != 0:
            return []
        found = [config] if byte == 0x20 else []
        return found + self._enter_and_step(((_ROOT, frame[1], 2),), frame[1], byte)

    def _step_string(self, config: Config, frame: Frame, byte: int) -> list[Config]:
        _, node, phase, count, pending = frame
        below = config[:-1]
        if phase == 0:
            return [(*below, (_STR, node, 1, 0, 0))] if byte == 0x22 else []
        if phase == 2:
            return [(*below, (_STR, node, 1, count, 0))] if byte in _ESCAPABLE else []
        if phase == 3:  # first continuation byte; ``pending`` holds the lead byte
            low, high = _FIRST_CONTINUATION.get(pending, (0x80, 0xBF))
            width = _utf8_width(pending)
            return [(*below, (_STR, node, 1, count, width - 2))] if low <= byte <= high else []
        if pending:
            return [(*below, (_STR, node, 1, count, pending - 1))] if 0x80 <= byte < 0xC0 else []
        if byte == 0x22:
            return [self._finish(below)] if count >= node.min_len else []
        width = _utf8_width(byte)
        if width == 0 or (node.max_len is not None and count >= node.max_len):
            return []
        count = count + 1 if node.tracks_length else 0
        if byte == 0x5C:
            return [(*below, (_STR, node, 2, count, 0))]
        if width > 1:
            return [(*below, (_STR, node, 3, count, byte))]
        return [(*below, (_STR, node, 1, count, 0))]

    def _step_literal(self, config: Config, frame: Frame, byte: int) -> list[Config]:
        _, node, pos, candidates = frame
        values = node.values
        going = tuple(i for i in candidates if len(values[i]) > pos and values[i][pos] == byte)
        found = [(*config[:-1], (_LIT, node, pos + 1, going))] if going else []
        if any(len(values[i]) == pos for i in candidates):
            found += self.step(self._finish(config[:-1]), byte)
        return found

    def _step_number(self, config: Config, frame: Frame, byte: int) -> list[Config]:
        _, node, text = frame
        found = []
        if byte in _NUMBER_BYTES:
            longer = text + bytes((byte,))
            if self.number_extra(node, longer) < INF:
                found.append((*config[:-1], (_NUM, node, longer)))
        if self.number_extra(node, text) == 0:
            found += self.step(self._finish(config[:-1]), byte)
        return found

    def _step_array(self, config: Config, frame: Frame, byte: int) -> list[Config]:
        _, node, phase, count = frame
        below = config[:-1]
        if phase == 0:
            return [(*below, (_ARR, node, 1, 0))] if byte == 0x5B else []
        if phase in (1, 3) and byte == 0x5D:
            return [self._finish(below)] if count >= node.min_items else []
        if phase == 3:
            item = node.item(count)
            fits = byte == 0x2C and item is not None and item.min_bytes < INF
            return [(*below, (_ARR, node, 4, count))] if fits else []
        item = node.item(count)  # phase 1 (first item) or 4 (after ",")
        if item is None:
            return []
        return self._enter_and_step((*below, (_ARR, node, 2, count)), item, byte)

    def _step_object(self, config: Config, frame: Frame, byte: int) -> list[Config]:
        _, node, phase, last, pos = frame
        below = config[:-1]
        plan = node.plan
        if phase == 0:
            return [(*below, (_OBJ, node, 1, -1, 0))] if byte == 0x7B else []
        if phase in (1, 8) and byte == 0x7D:
            return [self._finish(below)] if plan.can_close[last + 1] else []
        if phase == 8:
            fits = byte == 0x2C and bool(plan.candidates[last + 1])
            return [(*below, (_OBJ, node, 4, last, 0))] if fits else []
        if phase in (1, 4):
            if byte != 0x22:
                return []
            if node.is_dict:
                return [(*below, (_OBJ, node, 5, 0, 0), (_STR, _FREE_KEY, 1, 0, 0))]
            return [(*below, (_OBJ, node, 2, k, 1)) for k in plan.candidates[last + 1]]
        if phase == 2:
            key = node.properties[last].key
            if key[pos] != byte:
                return []
            nxt = (
                (_OBJ, node, 3, last, 0) if pos + 1 == len(key) else (_OBJ, node, 2, last, pos + 1)
            )
            return [(*below, nxt)]
        if phase == 3 and byte == 0x3A:
            return self._enter((*below, (_OBJ, node, 6, last, 0)), node.value(last))
        return []

    # -- costs ----------------------------------------------------------------------------------

    def _frame_cost(self, frame: Frame) -> float:
        kind, node = frame[0], frame[1]
        if kind == _STR:
            _, _, phase, count, pending = frame
            if phase == 0:
                return node.min_bytes
            missing = max(0, node.min_len - count) if node.tracks_length else 0
            if phase == 3:
                pending = _utf8_width(pending) - 1
            return pending + missing + (2 if phase == 2 else 1)
        if kind == _LIT:
            _, _, pos, candidates = frame
            return min(len(node.values[i]) - pos for i in candidates)
        if kind == _NUM:
            return self.number_extra(node, frame[2])
        if kind == _ARR:
            return array_cost(node, frame[2], frame[3])
        if kind == _OBJ:
            return object_cost(node, frame[2], frame[3], frame[4])
        return node.min_bytes if frame[2] == 0 else 0

    def number_extra(self, node: NumberNode, text: bytes) -> float:
        key = (id(node), text)
        found = self._numbers.get(key)
        if found is None:
            found = number_extra(node, text)
            self._remember(self._numbers, key, found)
        return found


def _initial_frame(node: Node) -> Frame:
    if isinstance(node, StringNode):
        return (_STR, node, 0, 0, 0)
    if isinstance(node, LiteralNode):
        return (_LIT, node, 0, tuple(range(len(node.values))))
    if isinstance(node, NumberNode):
        return (_NUM, node, b"")
    if isinstance(node, ArrayNode):
        return (_ARR, node, 0, 0)
    assert isinstance(node, ObjectNode)
    return (_OBJ, node, 0, -1, 0)


def _utf8_width(byte: int) -> int:
    """Bytes of the character a lead byte starts; 0 for bytes no string character starts with."""
    if 0x20 <= byte < 0x80:
        return 1
    if 0xC2 <= byte < 0xE0:
        return 2
    if 0xE0 <= byte < 0xF0:
        return 3
    if 0xF0 <= byte < 0xF5:
        return 4
    return 0


def in_string_body(state: State) -> bool:
    """Whether every configuration of ``state`` is inside a string, between two characters."""
    return all(c[-1][0] == _STR and c[-1][2] == 1 and c[-1][4] == 0 for c in state)
