"""Results of one batched generation, handed out to the invocations that asked for them.

``ChatPandaGPT.batch`` generates every input in one engine batch up front, then lets LangChain
run one invocation per input (so callbacks and tracing see one run each); each invocation
claims its result by content, as invocations run in any order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future

from langchain_pandagpt.conversation import Message
from langchain_pandagpt.generation.engine import GenerationResult


class Prefetch:
    """Results of a whole ``batch`` generated in one engine batch, claimed by each invocation
    of the batch (matched by content, as invocations run in any order)."""

    def __init__(self, keys: list[Hashable], results: Future[list[GenerationResult]]) -> None:
        self._slots: dict[Hashable, list[int]] = {}
        for index, key in enumerate(keys):
            self._slots.setdefault(key, []).append(index)
        self._results = results
        self._lock = threading.Lock()

    def claim(self, key: Hashable) -> GenerationResult | None:
        """The prefetched result for ``key``; None when there is none or the batch failed
        (the invocation then generates on its own and raises its own error)."""
        with self._lock:
            slots = self._slots.get(key)
            if not slots:
                return None
            index = slots.pop(0)
        try:
            return self._results.result()[index]
        except Exception:
            return None


def run_in_thread(target: Callable[[], list[GenerationResult]]) -> Future[list[GenerationResult]]:
    """``target()`` in a new thread, as a future (the caller goes on to start the batch's
    invocations, which wait for it)."""
    future: Future[list[GenerationResult]] = Future()

    def run() -> None:
        try:
            future.set_result(target())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name="pandagpt-batch", daemon=True).start()
    return future


def conversation_key(conversation: Sequence[Message]) -> Hashable:
    """What identifies a conversation's prompt (media by content hash)."""
    return tuple(
        (m.role, m.text, tuple(item.content_hash() for item in m.media)) for m in conversation
    )
