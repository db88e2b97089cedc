"""Caps that turn a resource blow-up into a fast, clean test failure."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

MiB = 1 << 20


def _address_space() -> int:
    """Bytes of address space this process maps now (``VmSize``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


@dataclass
class Elapsed:
    seconds: float = 0.0


@contextmanager
def memory_cap(extra_bytes: int) -> Iterator[Elapsed]:
    """Run the block with at most ``extra_bytes`` more address space than the process maps
    now (``RLIMIT_AS``), and time it.

    Allocations beyond the cap fail (``MemoryError``, torch's "can't allocate memory")
    instead of paging the machine to death, so a regression fails fast. The previous limit
    is restored afterwards. Torch's thread pool is started first, so its stacks are not
    counted against the block.
    """
    torch.ones(4096).sum()  # start the intra-op threads outside the cap
    np.ones(4096).sum()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space() + extra_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    elapsed = Elapsed()
    start = time.perf_counter()
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield elapsed
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        elapsed.seconds = time.perf_counter() - start
