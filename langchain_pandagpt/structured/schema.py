"""JSON schema -> a graph of nodes (string, literal, number, array, object, union).

``$ref`` (recursive too) becomes a shared :class:`UnionNode`; ``allOf`` is merged, ``oneOf``
read as ``anyOf``. Each node carries ``min_bytes``, the length of its shortest value, which
:func:`~langchain_pandagpt.structured.costs.settle_costs` fills in after compiling.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, TypeAlias

INF = math.inf
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

# --------------------------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------------------------


@dataclass
class ObjectPlan:
    """Per-position facts of an object, indexed by ``last written property + 1``."""

    candidates: list[tuple[int, ...]]
    can_close: list[bool]
    rest_after: list[float]
    first_cost: float
    comma_cost: list[float]


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
    plan: ObjectPlan | None = field(default=None, init=False, repr=False)

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


# --------------------------------------------------------------------------------------------
# Compiler
# --------------------------------------------------------------------------------------------


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


def walk_nodes(root: Node) -> list[Node]:
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


def union_leaves(node: UnionNode) -> tuple[Node, ...]:
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


def compile_schema(schema: Mapping[str, Any]) -> Node:
    """The node graph of a JSON schema document (costs not settled yet)."""
    return _Compiler(schema).compile(schema)
