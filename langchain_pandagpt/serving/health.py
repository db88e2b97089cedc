"""``/health`` that notices a dead or stuck engine.

The engine decodes in one worker thread. If that thread dies or hangs, queued requests wait
forever, so a health check that only proves the event loop answers would lie. The server
watches the engine instead: every streamed chunk is progress; when nothing moved for a while,
``/health`` queues a probe (a request cancelled at once, which the worker drops the next time
it collects work: no forward pass, nothing in ``/v1/stats``). A worker that neither streams
nor collects the probe within ``stall_s`` is reported unhealthy.
"""

from __future__ import annotations

import asyncio
import time

from langchain_pandagpt.conversation import Message
from langchain_pandagpt.generation.engine import GenerationEngine, RequestHandle, SamplingParams

#: How long one ``/health`` call waits for its probe before answering from what it knows.
_PROBE_WAIT_S = 0.5


class EngineMonitor:
    """Whether ``engine`` still makes progress (see the module docstring)."""

    def __init__(self, engine: GenerationEngine, stall_s: float) -> None:
        self.engine = engine
        self.stall_s = stall_s
        self.progress_at = time.monotonic()
        self._probe: tuple[RequestHandle, float] | None = None

    def progressed(self) -> None:
        """Called for every chunk the engine delivers (from any thread)."""
        self.progress_at = time.monotonic()

    async def problem(self) -> str | None:
        """``None`` when the engine is healthy, else what is wrong."""
        if time.monotonic() - self.progress_at < min(self.stall_s, 1.0):
            return None
        probe = self._probe
        if probe is None:
            try:
                handle = self.engine.submit(
                    [Message("human", "")], SamplingParams(max_new_tokens=1)
                )
            except Exception as error:
                return f"the generation engine refuses requests ({type(error).__name__}: {error})"
            handle.cancel()  # dropped by the worker when it collects it
            probe = self._probe = (handle, time.monotonic())
        handle, since = probe
        deadline = time.monotonic() + _PROBE_WAIT_S
        while not handle.done and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if handle.done:
            self._probe = None
            self.progressed()
            return None
        stalled = time.monotonic() - max(since, self.progress_at)
        if stalled < self.stall_s:
            return None
        return (
            f"the generation engine has not collected a request for {stalled:.0f} s "
            "(its worker thread is dead or stuck)"
        )
