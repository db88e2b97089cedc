"""Completion costs: the exact number of bytes of the shortest completion of every node and
automaton position.

Byte fallback (LLaMA) and byte-level (GPT-2) vocabularies have a one-byte token for every byte,
so bytes bound tokens: keeping ``cost <= tokens left`` after every token is what guarantees
that a constrained answer ends inside its budget. Numbers with ``minimum``/``maximum`` need a
search over digit extensions (:func:`number_extra`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from langchain_pandagpt.structured.schema import (
    INF,
    ArrayNode,
    LiteralNode,
    Node,
    NumberNode,
    ObjectNode,
    ObjectPlan,
    Property,
    StringNode,
    UnionNode,
    union_leaves,
)

#: Longest number extension searched when checking ``minimum``/``maximum`` feasibility.
_MAX_NUMBER_EXTENSION = 40
_NUMBER_PREFIX = re.compile(rb"-?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?)?")
_INTEGER_PREFIX = re.compile(rb"-?(?:0|[1-9][0-9]*)?")
_COMPLETE_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")


def _key_entry(prop: Property) -> float:
    """Bytes of ``"key":value`` with the shortest value."""
    return len(prop.key) + 1 + prop.value.min_bytes


def object_plan(node: ObjectNode) -> ObjectPlan:
    props = node.properties
    count = len(props)
    if node.is_dict:
        assert node.extra is not None
        comma = 2 + 1 + node.extra.min_bytes + 1
        return ObjectPlan([(0,), (0,)], [True, True], [1.0, 1.0], 1.0, [comma, comma])
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
    return ObjectPlan(candidates, can_close, rest_after, first_cost, comma_cost)


def array_after(node: ArrayNode) -> list[float]:
    """``after[i]``: bytes to close the array once ``i < min_items`` items are written."""
    after = [1.0] * (node.min_items + 1)
    for index in range(node.min_items - 1, -1, -1):
        item = node.item(index)
        after[index] = after[index + 1] + 1 + (INF if item is None else item.min_bytes)
    return after


def array_first_cost(node: ArrayNode, after: list[float]) -> float:
    """Bytes after ``[`` for the shortest array."""
    if node.max_items is not None and node.max_items < node.min_items:
        return INF
    if node.min_items == 0:
        return 1.0
    first = node.item(0)
    return INF if first is None else first.min_bytes + after[1]


def number_extra(node: NumberNode, text: bytes) -> float:
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


def array_cost(node: ArrayNode, phase: int, count: int) -> float:
    after = node.after
    if phase == 0:
        return node.min_bytes
    if phase == 1:
        return array_first_cost(node, after)
    if phase == 2:  # item ``count`` is being written
        count += 1
    elif phase == 4:  # after ",": item ``count`` is still to write
        item = node.item(count)
        tail = after[count + 1] if count + 1 < len(after) else 1.0
        return (INF if item is None else item.min_bytes) + tail
    return after[count] if count < len(after) else 1.0


def object_cost(node: ObjectNode, phase: int, last: int, pos: int) -> float:
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


def settle_costs(nodes: list[Node]) -> None:
    """Fixpoint of every node's shortest length (recursive schemas included), then plans."""
    for node in nodes:
        if isinstance(node, UnionNode):
            node.leaves = union_leaves(node)
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
            node.plan = object_plan(node)
        elif isinstance(node, ArrayNode):
            node.after = array_after(node)


def _estimate(node: Node) -> float:
    if isinstance(node, StringNode):
        fits = node.max_len is None or node.min_len <= node.max_len
        return 2 + node.min_len if fits else INF
    if isinstance(node, LiteralNode):
        return min((len(value) for value in node.values), default=INF)
    if isinstance(node, NumberNode):
        return number_extra(node, b"")
    if isinstance(node, ArrayNode):
        return 1 + array_first_cost(node, array_after(node))
    if isinstance(node, ObjectNode):
        return 1 + object_plan(node).first_cost
    return min((option.min_bytes for option in node.options), default=INF)
