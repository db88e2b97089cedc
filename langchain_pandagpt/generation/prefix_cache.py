"""Prefix reuse: KV caches of finished requests, kept for later prompts that start alike.

When a request finishes, the KV cache of its prompt plus answer is kept, keyed by per-position
content (token ids, media hashes; see ``PromptLayout.position_keys``). A later prompt that starts
with the same content (the same conversation plus a new turn) restarts from the longest cached
prefix and computes only the new positions.
"""

from __future__ import annotations

from collections import OrderedDict

from langchain_pandagpt.generation.decoder import KVCache
from langchain_pandagpt.generation.prompt import PositionKey


def common_prefix(a: tuple[PositionKey, ...], b: tuple[PositionKey, ...]) -> int:
    """How many leading positions ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    return next(i for i in range(n) if a[i] != b[i])


#: Most conversations kept: a lookup compares the prompt with every entry in the worker thread,
#: so the count is bounded as well as the bytes (small models fit thousands in 1 GiB).
DEFAULT_MAX_ENTRIES = 128


class PrefixCache:
    """LRU of KV caches keyed by the per-position content of the sequence they hold, bounded
    by the bytes of the tensors (``max_bytes=0`` disables it) and by ``max_entries``."""

    def __init__(self, max_bytes: int, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[PositionKey, ...], KVCache] = OrderedDict()
        self._bytes = 0

    def lookup(self, keys: tuple[PositionKey, ...]) -> tuple[int, KVCache | None]:
        """Longest cached prefix of ``keys``, leaving at least one position to compute (its
        logits start the answer)."""
        best, best_key = 0, None
        for key in self._entries:
            n = common_prefix(key, keys)
            if n > best:
                best, best_key = n, key
        best = min(best, len(keys) - 1)
        if best_key is None or best == 0:
            return 0, None
        self._entries.move_to_end(best_key)
        return best, tuple((k[:, :, :best], v[:, :, :best]) for k, v in self._entries[best_key])

    def store(self, keys: tuple[PositionKey, ...], kv: KVCache) -> None:
        """Keep ``kv``, dropping the entries it extends and then the least recently used."""
        if nbytes(kv) > self.max_bytes:
            return
        for key in [key for key in self._entries if common_prefix(key, keys) == len(key)]:
            self._bytes -= nbytes(self._entries.pop(key))
        self._entries[keys] = kv
        self._bytes += nbytes(kv)
        while self._bytes > self.max_bytes or len(self._entries) > self.max_entries:
            self._bytes -= nbytes(self._entries.popitem(last=False)[1])

    @property
    def nbytes(self) -> int:
        """Bytes of KV held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)


def nbytes(kv: KVCache) -> int:
    """Bytes held by the keys and values of ``kv``."""
    return sum(k.nbytes + v.nbytes for k, v in kv)
