"""Grammar-constrained JSON decoding that always finishes inside the token budget.

The engine calls a per-request logits processor before every sampled token
(``SamplingParams.logits_processor``). :class:`JsonLogitsProcessor` masks every token that cannot
continue a document of the schema, and every token after which the shortest valid completion
would no longer fit into what is left of ``max_new_tokens``. The answer therefore parses and
validates even when a random model writes it, and it never stops half-way.

Why not a library: xgrammar 0.2.8, llguidance 1.9.1, outlines-core 0.2.14 and
lm-format-enforcer 0.11.3 all install here (llguidance even masks our transformers-5 tokenizers
on CPU), but none of them bounds the answer by the token budget: they know whether a prefix can
still become valid, not how long its shortest completion is. A weak model then runs out of tokens
inside a string. Capping ``maxLength``/``maxItems``/digits in the schema instead truncates what a
real model writes or needs a worst-case budget; outlines-core's regex automata, which could give
distances, explode on optional properties. The automaton below is small because it only has to
cover what LangChain schemas use, and knowing the completion cost of every state is what makes
the guarantee possible.

How it works:

* :func:`compile_schema` turns a JSON schema into a graph of nodes (string, literal, number,
  array, object, union); ``$ref`` (recursive too) becomes a shared node.
* A pushdown automaton reads UTF-8 bytes. A configuration is a stack of frames; alternatives
  (``anyOf``, optional properties, a number that may end or go on) are a set of configurations.
* ``cost`` of a configuration is the exact number of bytes of its shortest completion. Byte
  fallback (LLaMA) and byte-level (GPT-2) vocabularies have a one-byte token for every byte, so
  bytes bound tokens: keeping ``cost <= tokens left`` after every token guarantees termination.
* Token masks come from a walk over a byte trie of the vocabulary, cached per state; inside
  strings, tokens without quotes, backslashes or control characters are allowed in bulk.

Output form: compact JSON (leading spaces allowed, no other whitespace), object keys in schema
order, only two-character escapes, numbers without exponents. Keywords enforced: ``type``,
``enum``, ``const``, ``properties``, ``required``, ``additionalProperties`` (as the value schema of
objects without ``properties``), ``items``, ``prefixItems``, ``minItems``, ``maxItems``,
``minLength``, ``maxLength``, ``minimum``, ``maximum``, ``exclusiveMinimum``,
``exclusiveMaximum``, ``anyOf``, ``oneOf`` (as ``anyOf``), ``allOf`` (merged), ``$ref``,
``nullable``. Not enforced: ``pattern``, ``format``, ``multipleOf``, ``uniqueItems``,
``minProperties``/``maxProperties``, ``not``, conditionals; a schema that relies on them may
yield values its validator rejects.
"""

from __future__ import annotations

import json
import math
import re
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, TypeAlias

import torch
from torch import Tensor

INF = math.inf
#: Longest number extension searched when checking ``minimum``/``maximum`` feasibility.
_MAX_NUMBER_EXTENSION = 40
#: Cached automaton steps and costs per grammar before the caches are reset.
_CACHE_LIMIT = 200_000
#: Cached per-state token walks (each up to a vocabulary of ids) per grammar and vocabulary.
_WALK_CACHE_LIMIT = 4096
#: Keywords that do not constrain a value (``$defs`` only hold targets of ``$ref``).
_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "$schema",
        "$id",
        "$comment",
        "$defs",
        "definitions",
    }
)
_ESCAPABLE = frozenset(b'"\\/bfnrt')
#: Allowed first continuation byte after lead bytes with a narrower range (RFC 3629).
_FIRST_CONTINUATION = {
    0xE0: (0xA0, 0xBF),
    0xED: (0x80, 0x9F),
    0xF0: (0x90, 0xBF),
    0xF4: (0x80, 0x8F),
}
_NUMBER_BYTES = frozenset(b"-.0123456789")
_NUMBER_PREFIX = re.compile(rb"-?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?)?")
_INTEGER_PREFIX = re.compile(rb"-?(?:0|[1-9][0-9]*)?")
_COMPLETE_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


# --------------------------------------------------------------------------------------------
# Schema -> node graph
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class StringNode:
    """A JSON string of ``min_len`` to ``max_len`` characters."""

    min_len: int = 0
    max_len: int | None = None
    min_bytes: float = field(default=INF, init=False, repr=False)

    @property
    def tracks_length(self) -> bool:
        return self.min_len > 0 or self.max_len is not None


@dataclass(eq=False)
class LiteralNode:
    """One of a fixed set of JSON texts (``enum``, ``const``, booleans, ``null``)."""

    values: tuple[bytes, ...]
    min_bytes: float = field(default=INF, init=False, repr=False)


@dataclass(eq=False)
class NumberNode:
    """A JSON number (an integer when ``integer``), within optional bounds."""

    integer: bool
    low: Fraction | None = None
    high: Fraction | None = None
    low_strict: bool = False
    high_strict: bool = False
    min_bytes: float = field(default=INF, init=False, repr=False)

    @property
    def bounded(self) -> bool:
        return self.low is not None or self.high is not None


@dataclass(eq=False)
class ArrayNode:
    """A JSON array: ``prefix`` items, then any number of ``items`` (``None``: no more)."""

    prefix: tuple[Node, ...]
    items: Node | None
    min_items: int = 0
    max_items: int | None = None
    min_bytes: float = field(default=INF, init=False, repr=False)
    #: ``after[i]``: bytes to close the array once ``i`` items are written (set after compiling).
    after: list[float] = field(default_factory=list, init=False, repr=False)

    def item(self, index: int) -> Node | None:
        if self.max_items is not None and index >= self.max_items:
            return None
        return self.prefix[index] if index < len(self.prefix) else self.items


@dataclass(eq=False)
class Property:
    key: bytes  # the key as JSON text, quotes included
    value: Node
    required: bool


@dataclass(eq=False)
class ObjectNode:
    """A JSON object with ``properties`` (in this order), or any keys with ``extra`` values."""

    properties: tuple[Property, ...]
    extra: Node | None
    min_bytes: float = field(default=INF, init=False, repr=False)
    plan: _ObjectPlan | None = field(default=None, init=False, repr=False)

    @property
    def is_dict(self) -> bool:
        return not self.properties and self.extra is not None

    def value(self, index: int) -> Node:
        if index < len(self.properties):
            return self.properties[index].value
        assert self.extra is not None
        return self.extra


@dataclass(eq=False)
class UnionNode:
    """Any of ``options`` (``anyOf``, type lists, ``$ref`` targets)."""

    options: list[Node]
    min_bytes: float = field(default=INF, init=False, repr=False)
    #: The non-union nodes reachable through nested unions (set after compiling).
    leaves: tuple[Node, ...] = field(default=(), init=False, repr=False)


Node: TypeAlias = StringNode | LiteralNode | NumberNode | ArrayNode | ObjectNode | UnionNode


def _json_text(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _fraction(value: Any, keyword: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{keyword} must be a number, got {value!r}")
    return Fraction(value)


class _Compiler:
    """Builds the node graph of one schema document (``$ref`` resolved inside it)."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document
        self.refs: dict[str, UnionNode] = {}
        self.any_node: UnionNode | None = None

    def compile(self, schema: Any) -> Node:
        if schema is True or (isinstance(schema, Mapping) and not set(schema) - _ANNOTATIONS):
            return self.any()
        if schema is False:
            return UnionNode([])
        if not isinstance(schema, Mapping):
            raise ValueError(f"not a JSON schema: {schema!r}")
        if "$ref" in schema:
            siblings = {k: v for k, v in schema.items() if k != "$ref" and k not in _ANNOTATIONS}
            if not siblings:
                return self.ref(schema["$ref"])
            return self.compile(self.merge([self.resolve(schema["$ref"]), siblings]))
        if "allOf" in schema:
            rest = {k: v for k, v in schema.items() if k != "allOf"}
            return self.compile(self.merge([*schema["allOf"], rest]))
        for keyword in ("anyOf", "oneOf"):
            if keyword in schema:
                rest = {k: v for k, v in schema.items() if k != keyword}
                return UnionNode([self.compile({**rest, **option}) for option in schema[keyword]])
        if "const" in schema:
            return LiteralNode((_json_text(schema["const"]),))
        if "enum" in schema:
            return LiteralNode(tuple(_json_text(value) for value in schema["enum"]))
        types = self.types(schema)
        if types is None:
            return self.any()
        nodes = [self.typed(kind, schema) for kind in types]
        return nodes[0] if len(nodes) == 1 else UnionNode(nodes)

    def types(self, schema: Mapping[str, Any]) -> list[str] | None:
        declared = schema.get("type")
        if isinstance(declared, str):
            types = [declared]
        elif isinstance(declared, list):
            types = list(declared)
        elif "properties" in schema or "additionalProperties" in schema:
            types = ["object"]
        elif "items" in schema or "prefixItems" in schema:
            types = ["array"]
        else:
            return None
        if schema.get("nullable") and "null" not in types:
            types.append("null")
        return types

    def typed(self, kind: str, schema: Mapping[str, Any]) -> Node:
        if kind == "string":
            return StringNode(int(schema.get("minLength", 0)), schema.get("maxLength"))
        if kind in ("integer", "number"):
            return self.number(kind == "integer", schema)
        if kind == "boolean":
            return LiteralNode((b"true", b"false"))
        if kind == "null":
            return LiteralNode((b"null",))
        if kind == "array":
            return self.array(schema)
        if kind == "object":
            return self.object(schema)
        raise ValueError(f"unknown JSON schema type {kind!r}")

    def number(self, integer: bool, schema: Mapping[str, Any]) -> NumberNode:
        node = NumberNode(integer)
        if "minimum" in schema:
            node.low = _fraction(schema["minimum"], "minimum")
        if "maximum" in schema:
            node.high = _fraction(schema["maximum"], "maximum")
        low_x, high_x = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if isinstance(low_x, bool):  # draft 4: a flag on "minimum"
            node.low_strict = low_x
        elif low_x is not None:
            bound = _fraction(low_x, "exclusiveMinimum")
            if node.low is None or bound >= node.low:
                node.low, node.low_strict = bound, True
        if isinstance(high_x, bool):
            node.high_strict = high_x
        elif high_x is not None:
            bound = _fraction(high_x, "exclusiveMaximum")
            if node.high is None or bound <= node.high:
                node.high, node.high_strict = bound, True
        return node

    def array(self, schema: Mapping[str, Any]) -> ArrayNode:
        items = schema.get("items", True)
        prefix = schema.get("prefixItems", [])
        if isinstance(items, list):  # draft 4 tuple form
            prefix, items = items, schema.get("additionalItems", False)
        elif "prefixItems" in schema and "items" not in schema:
            items = False
        return ArrayNode(
            prefix=tuple(self.compile(item) for item in prefix),
            items=None if items is False else self.compile(items),
            min_items=int(schema.get("minItems", 0)),
            max_items=schema.get("maxItems"),
        )

    def object(self, schema: Mapping[str, Any]) -> ObjectNode:
        declared = dict(schema.get("properties") or {})
        required = list(schema.get("required") or [])
        for name in required:
            declared.setdefault(name, True)
        properties = tuple(
            Property(_json_text(str(name)), self.compile(sub), name in required)
            for name, sub in declared.items()
        )
        extra = schema.get("additionalProperties", "properties" not in schema)
        if properties or extra is False:  # declared keys only; declaring none means no keys
            return ObjectNode(properties, None)
        return ObjectNode((), self.compile(extra))

    def any(self) -> UnionNode:
        """Any JSON value (recursive: arrays and objects of any values)."""
        if self.any_node is None:
            self.any_node = UnionNode([])
            self.any_node.options = [
                StringNode(),
                NumberNode(False),
                LiteralNode((b"true", b"false", b"null")),
                ArrayNode((), self.any_node),
                ObjectNode((), self.any_node),
            ]
        return self.any_node

    def ref(self, pointer: str) -> UnionNode:
        node = self.refs.get(pointer)
        if node is None:
            node = self.refs[pointer] = UnionNode([])
            node.options = [self.compile(self.resolve(pointer))]
        return node

    def resolve(self, pointer: str) -> Any:
        if not isinstance(pointer, str) or not pointer.startswith("#"):
            raise ValueError(f"only local $ref pointers (#/...) are supported, got {pointer!r}")
        target: Any = self.document
        for part in filter(None, pointer[1:].split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            try:
                target = target[int(part)] if isinstance(target, list) else target[part]
            except (KeyError, IndexError, ValueError, TypeError) as exc:
                raise ValueError(f"$ref {pointer!r} does not resolve in the schema") from exc
        return target

    def merge(self, schemas: Sequence[Any]) -> dict[str, Any]:
        """``allOf``: shallow merge, properties and ``required`` combined, later keys winning."""
        merged: dict[str, Any] = {}
        for schema in schemas:
            while isinstance(schema, Mapping) and "$ref" in schema:
                rest = {k: v for k, v in schema.items() if k != "$ref"}
                schema = {**self.resolve(schema["$ref"]), **rest}
            if not isinstance(schema, Mapping):
                continue
            for key, value in schema.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required":
                    merged["required"] = [*merged.get("required", []), *value]
                else:
                    merged[key] = value
        return merged


def _walk_nodes(root: Node) -> list[Node]:
    """Every node reachable from ``root``, each once."""
    seen: dict[int, Node] = {}
    pending = [root]
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        if isinstance(node, UnionNode):
            pending.extend(node.options)
        elif isinstance(node, ArrayNode):
            pending.extend(node.prefix)
            if node.items is not None:
                pending.append(node.items)
        elif isinstance(node, ObjectNode):
            pending.extend(p.value for p in node.properties)
            if node.extra is not None:
                pending.append(node.extra)
    return list(seen.values())


def _union_leaves(node: UnionNode) -> tuple[Node, ...]:
    leaves: list[Node] = []
    seen: set[int] = set()
    pending: list[Node] = [node]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, UnionNode):
            pending.extend(reversed(current.options))
        else:
            leaves.append(current)
    return tuple(leaves)


# --------------------------------------------------------------------------------------------
# Completion costs (bytes of the shortest completion)
# --------------------------------------------------------------------------------------------


def _key_entry(prop: Property) -> float:
    """Bytes of ``"key":value`` with the shortest value."""
    return len(prop.key) + 1 + prop.value.min_bytes


@dataclass
class _ObjectPlan:
    """Per-position facts of an object, indexed by ``last written property + 1``."""

    candidates: list[tuple[int, ...]]
    can_close: list[bool]
    rest_after: list[float]
    first_cost: float
    comma_cost: list[float]


def _object_plan(node: ObjectNode) -> _ObjectPlan:
    props = node.properties
    count = len(props)
    if node.is_dict:
        assert node.extra is not None
        comma = 2 + 1 + node.extra.min_bytes + 1
        return _ObjectPlan([(0,), (0,)], [True, True], [1.0, 1.0], 1.0, [comma, comma])
    rest_after = [0.0] * (count + 1)  # index j + 1 for "after property j"
    first_required: list[int | None] = [None] * (count + 1)
    running, upcoming = 1.0, None
    for j in range(count - 1, -2, -1):
        rest_after[j + 1] = running
        first_required[j + 1] = upcoming
        if j >= 0 and props[j].required:
            running += 1 + _key_entry(props[j])
            upcoming = j
    candidates, comma_cost = [], []
    for j in range(-1, count):
        stop = first_required[j + 1]
        last = count - 1 if stop is None else stop
        options = tuple(k for k in range(j + 1, last + 1) if props[k].value.min_bytes < INF)
        candidates.append(options)
        comma_cost.append(
            min((_key_entry(props[k]) + rest_after[k + 1] for k in options), default=INF)
        )
    can_close = [first_required[j + 1] is None for j in range(-1, count)]
    first_cost = 1.0 if can_close[0] else comma_cost[0]
    return _ObjectPlan(candidates, can_close, rest_after, first_cost, comma_cost)


def _array_after(node: ArrayNode) -> list[float]:
    """``after[i]``: bytes to close the array once ``i < min_items`` items are written."""
    after = [1.0] * (node.min_items + 1)
    for index in range(node.min_items - 1, -1, -1):
        item = node.item(index)
        after[index] = after[index + 1] + 1 + (INF if item is None else item.min_bytes)
    return after


def _array_first_cost(node: ArrayNode, after: list[float]) -> float:
    """Bytes after ``[`` for the shortest array."""
    if node.max_items is not None and node.max_items < node.min_items:
        return INF
    if node.min_items == 0:
        return 1.0
    first = node.item(0)
    return INF if first is None else first.min_bytes + after[1]


def _number_extra(node: NumberNode, text: bytes) -> float:
    """Bytes to append to ``text`` for a complete number of ``node`` (``INF``: impossible)."""
    prefix = _INTEGER_PREFIX if node.integer else _NUMBER_PREFIX
    if not prefix.fullmatch(text):
        return INF
    if not node.bounded:
        return 0 if _COMPLETE_NUMBER.fullmatch(text) else 1
    negative = text.startswith(b"-")
    extra = _magnitude_extra(node.integer, text[negative:], _magnitude_bounds(node, negative))
    if not text:  # a "-" may still come first
        extra = min(extra, 1 + _magnitude_extra(node.integer, b"", _magnitude_bounds(node, True)))
    return extra


@dataclass(frozen=True)
class _Bounds:
    """Bounds on the magnitude ``x >= 0`` of a number whose sign is already fixed."""

    low: Fraction | None
    high: Fraction | None
    low_strict: bool
    high_strict: bool

    def hit(self, first: int, last: int, exponent: int) -> bool:
        """Whether some ``m / 10**exponent`` with ``first <= m <= last`` is within bounds."""
        scale = 10**exponent
        if self.low is not None:
            limit = self.low * scale
            first = max(first, math.floor(limit) + 1 if self.low_strict else math.ceil(limit))
        if self.high is not None:
            limit = self.high * scale
            last = min(last, math.ceil(limit) - 1 if self.high_strict else math.floor(limit))
        return first <= last


def _magnitude_bounds(node: NumberNode, negative: bool) -> _Bounds:
    if not negative:
        return _Bounds(node.low, node.high, node.low_strict, node.high_strict)
    # v = -x:  v >= low  <=>  x <= -low;  v <= high  <=>  x >= -high
    low = None if node.high is None else -node.high
    high = None if node.low is None else -node.low
    return _Bounds(low, high, node.high_strict, node.low_strict)


def _magnitude_extra(integer: bool, body: bytes, bounds: _Bounds) -> float:
    """Fewest bytes that turn the unsigned prefix ``body`` into a number within ``bounds``."""
    integral, dot, fraction = body.partition(b".")
    if dot:
        base, digits = int(integral + fraction), len(fraction)
        for more in range(0 if fraction else 1, _MAX_NUMBER_EXTENSION + 1):
            first = base * 10**more
            if bounds.hit(first, first + 10**more - 1, digits + more):
                return more
        return INF
    best = INF
    digits = 0 if integral else 1
    while digits < best:  # ``digits`` more integer digits cost at least ``digits`` bytes
        span = _integral_span(integral, digits)
        if span is None or (bounds.high is not None and span[0] > bounds.high):
            break  # values only grow with more digits
        first, last = span
        if bounds.hit(first, last, 0):
            return min(best, digits)
        if not integer:
            best = min(best, digits + 1 + _fraction_digits(first, last + 1, bounds))
        digits += 1
    return best


def _integral_span(integral: bytes, digits: int) -> tuple[int, int] | None:
    """Smallest and largest integer part after appending ``digits`` digits to ``integral``."""
    if not integral:
        return (0, 9) if digits == 1 else (10 ** (digits - 1), 10**digits - 1)
    if integral == b"0":
        return (0, 0) if digits == 0 else None
    first = int(integral) * 10**digits
    return first, first + 10**digits - 1


def _fraction_digits(start: int, stop: int, bounds: _Bounds) -> float:
    """Fewest fraction digits that put a value of ``[start, stop)`` within ``bounds``."""
    for digits in range(1, _MAX_NUMBER_EXTENSION + 1):
        scale = 10**digits
        if bounds.hit(start * scale, stop * scale - 1, digits):
            return digits
    return INF


# --------------------------------------------------------------------------------------------
# The grammar: compiled nodes, costs, and the byte automaton
# --------------------------------------------------------------------------------------------

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
        self.root = _Compiler(schema).compile(schema)
        nodes = _walk_nodes(self.root)
        _settle_costs(nodes)
        if self.root.min_bytes == INF:
            raise ValueError("the JSON schema admits no value that this decoder can write")
        self._steps: dict[tuple[Config, int], tuple[Config, ...]] = {}
        self._costs: dict[Config, float] = {}
        self._numbers: dict[tuple[int, bytes], float] = {}
        self._lock = threading.Lock()
        #: Token masks per vocabulary, owned by the grammar so that dropping the grammar (the
        #: registry's LRU) frees them; weak on the vocabulary, which its tokenizer owns.
        self.mask_tables: weakref.WeakKeyDictionary[TokenVocabulary, _MaskTable] = (
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
            if self._number_extra(node, longer) < INF:
                found.append((*config[:-1], (_NUM, node, longer)))
        if self._number_extra(node, text) == 0:
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
            return self._number_extra(node, frame[2])
        if kind == _ARR:
            return _array_cost(node, frame[2], frame[3])
        if kind == _OBJ:
            return _object_cost(node, frame[2], frame[3], frame[4])
        return node.min_bytes if frame[2] == 0 else 0

    def _number_extra(self, node: NumberNode, text: bytes) -> float:
        key = (id(node), text)
        found = self._numbers.get(key)
        if found is None:
            found = _number_extra(node, text)
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


def _array_cost(node: ArrayNode, phase: int, count: int) -> float:
    after = node.after
    if phase == 0:
        return node.min_bytes
    if phase == 1:
        return _array_first_cost(node, after)
    if phase == 2:  # item ``count`` is being written
        count += 1
    elif phase == 4:  # after ",": item ``count`` is still to write
        item = node.item(count)
        tail = after[count + 1] if count + 1 < len(after) else 1.0
        return (INF if item is None else item.min_bytes) + tail
    return after[count] if count < len(after) else 1.0


def _object_cost(node: ObjectNode, phase: int, last: int, pos: int) -> float:
    plan = node.plan
    assert plan is not None
    if phase == 0:
        return node.min_bytes
    if phase == 1:
        return plan.first_cost
    if phase == 4:
        return plan.comma_cost[last + 1]
    value = node.value(last).min_bytes
    if phase == 2:
        return len(node.properties[last].key) - pos + 1 + value + plan.rest_after[last + 1]
    if phase == 3:
        return 1 + value + plan.rest_after[last + 1]
    if phase == 5:  # free key on the stack
        return 1 + value + 1
    return plan.rest_after[last + 1]  # 6 (value on the stack) or 8 (after a value)


def _settle_costs(nodes: list[Node]) -> None:
    """Fixpoint of every node's shortest length (recursive schemas included), then plans."""
    for node in nodes:
        if isinstance(node, UnionNode):
            node.leaves = _union_leaves(node)
    changed = True
    while changed:
        changed = False
        for node in nodes:
            value = _estimate(node)
            if value < node.min_bytes:
                node.min_bytes = value
                changed = True
    for node in nodes:
        if isinstance(node, ObjectNode):
            node.plan = _object_plan(node)
        elif isinstance(node, ArrayNode):
            node.after = _array_after(node)


def _estimate(node: Node) -> float:
    if isinstance(node, StringNode):
        fits = node.max_len is None or node.min_len <= node.max_len
        return 2 + node.min_len if fits else INF
    if isinstance(node, LiteralNode):
        return min((len(value) for value in node.values), default=INF)
    if isinstance(node, NumberNode):
        return _number_extra(node, b"")
    if isinstance(node, ArrayNode):
        return 1 + _array_first_cost(node, _array_after(node))
    if isinstance(node, ObjectNode):
        return 1 + _object_plan(node).first_cost
    return min((option.min_bytes for option in node.options), default=INF)


# --------------------------------------------------------------------------------------------
# Token vocabulary
# --------------------------------------------------------------------------------------------


class _TrieNode:
    __slots__ = ("children", "tokens")

    def __init__(self) -> None:
        self.children: dict[int, _TrieNode] = {}
        self.tokens: list[int] = []


def _build_trie(entries: Iterator[tuple[int, bytes]]) -> _TrieNode:
    root = _TrieNode()
    for token, data in entries:
        node = root
        for byte in data:
            node = node.children.setdefault(byte, _TrieNode())
        node.tokens.append(token)
    return root


def _plain_chars(data: bytes) -> int:
    """Characters of ``data`` if it can sit inside a JSON string as is, else 0."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return 0
    if any(char in '"\\' or char < " " for char in text):
        return 0
    return len(text)


def _gpt2_byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes-to-unicode map used by byte-level BPE vocabularies."""
    visible = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(visible)
    extra = 0
    for byte in range(256):
        if byte not in visible:
            visible.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(char): byte for byte, char in zip(visible, chars, strict=True)}


def tokenizer_token_bytes(tokenizer: Any) -> list[bytes | None]:
    """Each token's bytes as it appears inside decoded text; ``None`` for special tokens.

    Handles SentencePiece-style vocabularies (``▁`` for spaces, ``<0xNN>`` byte fallback, as
    LLaMA and Vicuna) and byte-level BPE (GPT-2 style) Hugging Face tokenizers.
    """
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_ids)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    byte_level = backend is not None and "ByteLevel" in repr(backend.decoder)
    decoder = _gpt2_byte_decoder() if byte_level else {}
    result: list[bytes | None] = []
    for token, piece in enumerate(pieces):
        if token in special or piece is None:
            result.append(None)
        elif byte_level:
            result.append(
                bytes(decoder[char] for char in piece)
                if set(piece) <= decoder.keys()
                else piece.encode()
            )
        elif match := _BYTE_TOKEN.fullmatch(piece):
            result.append(bytes((int(match.group(1), 16),)))
        else:
            result.append(piece.replace("▁", " ").encode())
    return result


class TokenVocabulary:
    """Token bytes of one tokenizer and the tries masks are computed from.

    ``size`` is the width of the model's logits (it may exceed the tokenizer; extra ids are
    never allowed).
    """

    def __init__(self, token_bytes: Sequence[bytes | None], size: int, eos_id: int | None) -> None:
        self.token_bytes = [*token_bytes[:size], *[None] * (size - len(token_bytes))]
        self.size = size
        self.eos_id = eos_id
        usable = [(t, data) for t, data in enumerate(self.token_bytes) if data]
        self.trie = _build_trie(iter(usable))
        lengths = [_plain_chars(data) if data else 0 for data in self.token_bytes]
        #: Characters of tokens that may appear inside a JSON string unchanged (0: not plain).
        self.plain_chars = torch.tensor(lengths, dtype=torch.int32)
        self.escape_trie = _build_trie(iter([(t, data) for t, data in usable if not lengths[t]]))
        text_start = [
            bool(data and data.lstrip(b" ")[:1] not in (b"", b"{")) for data in self.token_bytes
        ]
        #: Tokens that begin a plain-text answer (first non-space byte other than ``{``).
        self.text_start = torch.tensor(text_start, dtype=torch.bool)
        if eos_id is not None and eos_id < size:
            self.text_start[eos_id] = True
        self.newline_id = next((t for t, data in usable if data == b"\n"), None)

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, size: int | None = None) -> TokenVocabulary:
        """The (cached) vocabulary of a Hugging Face tokenizer, for logits of width ``size``."""
        size = len(tokenizer) if size is None else size
        with _VOCABULARY_LOCK:
            per_size = _VOCABULARIES.setdefault(tokenizer, {})
            vocabulary = per_size.get(size)
            if vocabulary is None:
                vocabulary = cls(tokenizer_token_bytes(tokenizer), size, tokenizer.eos_token_id)
                per_size[size] = vocabulary
        return vocabulary


_VOCABULARIES: weakref.WeakKeyDictionary[Any, dict[int, TokenVocabulary]] = (
    weakref.WeakKeyDictionary()
)
_VOCABULARY_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------
# Masks and the logits processor
# --------------------------------------------------------------------------------------------


class _MaskTable:
    """Allowed tokens per automaton state for one grammar and vocabulary (cached)."""

    def __init__(self, grammar: JsonGrammar, vocabulary: TokenVocabulary) -> None:
        self.grammar = grammar
        self.vocabulary = vocabulary
        self._walks: dict[tuple[State, bool], tuple[Tensor, Tensor]] = {}
        self._lock = threading.Lock()

    def allowed(self, state: State, budget: float) -> Tensor:
        """Tokens after which some configuration of ``state`` completes within ``budget`` bytes."""
        mask = torch.zeros(self.vocabulary.size, dtype=torch.bool)
        in_string = all(c[-1][0] == _STR and c[-1][2] == 1 and c[-1][4] == 0 for c in state)
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

    def _token_costs(self, trie: _TrieNode, state: State) -> tuple[Tensor, Tensor]:
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


def _mask_table(grammar: JsonGrammar, vocabulary: TokenVocabulary) -> _MaskTable:
    with _TABLE_LOCK:
        table = grammar.mask_tables.get(vocabulary)
        if table is None:
            table = grammar.mask_tables[vocabulary] = _MaskTable(grammar, vocabulary)
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
