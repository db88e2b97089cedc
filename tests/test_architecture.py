"""The layer rule, enforced on the source: every import in ``langchain_pandagpt`` is parsed with
``ast`` (module level, inside functions, under ``TYPE_CHECKING``, and
``importlib.import_module("langchain_pandagpt....")`` string literals) and checked against the
layer order below, bottom to top. A module imports only its own layer and those below; layers
1-7 and ``serving/`` are framework-free (no LangChain); ``serving/`` never imports the LangChain
surface (layer 8); no two modules import each other, directly or through others.

The root ``__init__.py`` is exempt as an importer: it lazily re-exports names from every layer.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

PACKAGE = "langchain_pandagpt"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

#: Edges ``(importer, imported)`` excused from the rule: none, and it stays that way (a layer
#: break is fixed, not listed). ``test_known_violations_are_still_real`` fails on a stale entry.
KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()

#: Layer of a module by its path relative to the package (first match wins), bottom to top.
LAYERS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, ("errors.py", "downloads.py")),
    (2, ("imagebind/",)),
    (3, ("media/",)),
    (4, ("conversation.py",)),
    (5, ("structured/",)),
    (6, ("model/",)),
    (7, ("generation/",)),
    (
        8,
        (
            "chat_models.py",
            "chat_messages.py",
            "embeddings.py",
            "content_blocks.py",
            "media_rag.py",
            "media_store.py",
            "demo.py",
        ),
    ),
    (9, ("serving/",)),
    (10, ("cli/",)),
)
LANGCHAIN_SURFACE = 8
SERVING = 9
#: Layers that never import LangChain: everything below the surface, and the server.
FRAMEWORK_FREE = frozenset({1, 2, 3, 4, 5, 6, 7, SERVING})


@dataclass(frozen=True)
class Import:
    """One import statement (or ``import_module`` literal) found in a module."""

    target: str  # a dotted module name, or for ``from x import y`` the guess ``x.y``
    fallback: str  # ``x`` for ``from x import y`` (``y`` may be a name, not a module)
    line: int


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    """The layer of a module of the package by its path; ``None`` for an unlisted module."""
    relative = module.removeprefix(PACKAGE).lstrip(".").replace(".", "/")
    for layer, prefixes in LAYERS:
        for prefix in prefixes:
            if prefix.endswith("/"):
                if relative == prefix[:-1] or relative.startswith(prefix):
                    return layer
            elif relative == prefix.removesuffix(".py"):
                return layer
    return None


def imports_in(source: str, module: str, is_package: bool = False) -> Iterator[Import]:
    """Every import anywhere in ``source``: module level, in functions, under ``if
    TYPE_CHECKING``, relative ones resolved, and ``import_module("...")`` string literals."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield Import(f"{base}.{alias.name}", base, node.lineno)
        elif isinstance(node, ast.Call) and _is_import_module(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield Import(first.value, first.value, node.lineno)


def _is_import_module(func: ast.expr) -> bool:
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name in {"import_module", "__import__"}


@cache
def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def resolve(found: Import, modules: dict[str, Path] | set[str]) -> str:
    """The module an import loads: ``from pkg import sub`` is ``pkg.sub`` when that is a module,
    else ``pkg``; outside the package, the top-level distribution name."""
    for candidate in (found.target, found.fallback):
        if candidate in modules:
            return candidate
    if found.fallback.split(".")[0] == PACKAGE:
        return found.fallback  # an unknown submodule: reported by the layer check
    return found.fallback.split(".")[0]


@cache
def import_graph() -> dict[str, dict[str, int]]:
    """importer -> {imported module (package modules and top-level externals): first line}."""
    modules = package_modules()
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        is_package = path.name == "__init__.py"
        for found in imports_in(path.read_text(encoding="utf-8"), module, is_package):
            target = resolve(found, modules)
            if target != module:
                edges.setdefault(target, found.line)
        graph[module] = edges
    return graph


def _internal(target: str) -> bool:
    return target == PACKAGE or target.startswith(f"{PACKAGE}.")


def _is_langchain(target: str) -> bool:
    return target.startswith("langchain") and not _internal(target)


def _checked_importers() -> Iterator[tuple[str, int, dict[str, int]]]:
    for module, edges in import_graph().items():
        if module == PACKAGE:
            continue  # lazy re-exports of every layer
        layer = layer_of(module)
        if layer is not None:  # else reported by test_every_module_has_a_layer
            yield module, layer, edges


def layer_violations() -> dict[tuple[str, str], str]:
    """Edges breaking rules (a)-(c), each with the reason."""
    found: dict[tuple[str, str], str] = {}
    for module, layer, edges in _checked_importers():
        for target in edges:
            if _is_langchain(target):
                if layer in FRAMEWORK_FREE:
                    found[module, target] = f"layer {layer} is framework-free"
                continue
            if not _internal(target):
                continue
            target_layer = layer_of(target)
            if target == PACKAGE:
                found[module, target] = "imports the root package's lazy re-exports"
            elif target_layer is None:
                found[module, target] = "imports a module without a layer"
            elif layer == SERVING and target_layer == LANGCHAIN_SURFACE:
                found[module, target] = "serving/ never imports the LangChain surface"
            elif target_layer > layer:
                found[module, target] = f"layer {layer} imports layer {target_layer}"
    return found


def internal_graph(skip: frozenset[tuple[str, str]] = frozenset()) -> dict[str, set[str]]:
    return {
        module: {t for t in edges if _internal(t) and (module, t) not in skip}
        for module, edges in import_graph().items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def _on_a_cycle(edge: tuple[str, str], graph: dict[str, set[str]]) -> bool:
    """Whether ``edge`` (a -> b) closes a cycle: a is reachable from b."""
    source, target = edge
    seen, todo = {target}, [target]
    while todo:
        for child in graph.get(todo.pop(), ()):
            if child == source:
                return True
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return False


def _report(edges: dict[tuple[str, str], str]) -> str:
    graph = import_graph()
    lines = []
    for (module, target), reason in sorted(edges.items()):
        path = package_modules()[module].relative_to(ROOT.parent)
        lines.append(f"{path}:{graph[module][target]}: {module} -> {target} ({reason})")
    return "\n".join(lines)


def test_every_module_has_a_layer() -> None:
    unlisted = [m for m in package_modules() if m != PACKAGE and layer_of(m) is None]
    assert not unlisted, f"give these modules a layer in LAYERS (see common rules): {unlisted}"


def test_framework_free_layers_never_import_langchain() -> None:
    bad = {e: r for e, r in layer_violations().items() if _is_langchain(e[1])}
    bad = {e: r for e, r in bad.items() if e not in KNOWN_VIOLATIONS}
    assert not bad, "LangChain imported below the surface:\n" + _report(bad)


def test_serving_never_imports_the_langchain_surface() -> None:
    bad = {e: r for e, r in layer_violations().items() if r.startswith("serving/")}
    bad = {e: r for e, r in bad.items() if e not in KNOWN_VIOLATIONS}
    assert not bad, "serving/ imports layer 8:\n" + _report(bad)


def test_no_module_imports_a_higher_layer() -> None:
    bad = {e: r for e, r in layer_violations().items() if e not in KNOWN_VIOLATIONS}
    assert not bad, "imports against the layer order:\n" + _report(bad)


def test_no_import_cycles() -> None:
    found = cycles(internal_graph(skip=KNOWN_VIOLATIONS))
    assert not found, f"modules importing each other (directly or through others): {found}"


def test_known_violations_are_still_real() -> None:
    """The allow-list cannot go stale: an edge that is gone or now allowed must be deleted."""
    graph = import_graph()
    full = internal_graph()
    violations = layer_violations()
    stale = [
        edge
        for edge in sorted(KNOWN_VIOLATIONS)
        if edge[1] not in graph.get(edge[0], {})
        or (edge not in violations and not _on_a_cycle(edge, full))
    ]
    assert not stale, f"fixed: delete these from KNOWN_VIOLATIONS in {__name__}: {stale}"


# The checker itself, on made-up sources.


def test_every_kind_of_import_is_found() -> None:
    source = """
from __future__ import annotations
import importlib
from typing import TYPE_CHECKING
import langchain_core.messages
from langchain_pandagpt.model import bundle
from . import parts
from ..errors import MediaError
if TYPE_CHECKING:
    from langchain_pandagpt.embeddings import ImageBindEmbeddings
def later():
    from langchain_pandagpt.content_blocks import MediaPolicy
    return importlib.import_module("langchain_pandagpt.media_rag")
"""
    modules = {
        f"{PACKAGE}.{name}"
        for name in (
            "model",
            "model.bundle",
            "serving",
            "serving.parts",
            "errors",
            "embeddings",
            "content_blocks",
            "media_rag",
        )
    }
    found = {resolve(i, modules) for i in imports_in(source, f"{PACKAGE}.serving.server", False)}
    assert found == {
        "__future__",
        "importlib",
        "typing",
        "langchain_core",
        f"{PACKAGE}.model.bundle",
        f"{PACKAGE}.serving.parts",
        f"{PACKAGE}.errors",
        f"{PACKAGE}.embeddings",
        f"{PACKAGE}.content_blocks",
        f"{PACKAGE}.media_rag",
    }


@pytest.mark.parametrize(
    ("module", "layer"),
    [
        (f"{PACKAGE}.errors", 1),
        (f"{PACKAGE}.imagebind", 2),
        (f"{PACKAGE}.imagebind.model", 2),
        (f"{PACKAGE}.media.policy", 3),
        (f"{PACKAGE}.conversation", 4),
        (f"{PACKAGE}.model.embedder", 6),
        (f"{PACKAGE}.generation.registry", 7),
        (f"{PACKAGE}.media_rag", 8),
        (f"{PACKAGE}.serving.server", 9),
        (f"{PACKAGE}.cli.__main__", 10),
        (f"{PACKAGE}.modeling", None),
    ],
)
def test_layer_of(module: str, layer: int | None) -> None:
    assert layer_of(module) == layer


def test_cycles_are_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert _on_a_cycle(("c", "a"), graph) and not _on_a_cycle(("c", "d"), graph)
