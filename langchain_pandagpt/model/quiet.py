"""Loading a model prints only what we log: three known third-party outputs are silenced here.

Each is silenced by its exact text, where we call the library, so that every other warning,
log record and progress bar (our own, downloads, anything new upstream) still shows:

* bitsandbytes logs, once on import, that its optional CPU kernel package (``kernels``) is not
  installed (nothing is wrong: it falls back to its own code), and with int8 on a CPU, at every
  matrix product, that it casts the fp32 inputs to fp16 (as LLM.int8 always does; documented);
* transformers draws "Loading weights" and "Writing model shards" bars for local files that
  take milliseconds;
* transformers deprecated ``is_gradient_checkpointing``, which peft still reads when it wraps
  a model (a ``FutureWarning`` on every load).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

#: tqdm descriptions of transformers' bars for local work (download bars are huggingface_hub's).
QUIET_BARS: Final = frozenset({"Loading weights", "Writing model shards"})
#: bitsandbytes loggers and the start of the one notice dropped from each.
_BNB_NOTICES: Final = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    "bitsandbytes.autograd._functions": "MatMul8bitLt: inputs will be cast from",
}
#: Regex of the deprecation peft triggers in transformers on every ``PeftModel``.
_CHECKPOINTING_WARNING: Final = r"`is_gradient_checkpointing` is deprecated"


class _DropNotice(logging.Filter):
    """Drops the records whose message starts with ``prefix``; lets every other one through."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def drop_bitsandbytes_notices() -> None:
    """Filters the two bitsandbytes notices above from their loggers, for the whole process.

    They are logged on import (which peft triggers wherever it is imported: loading, training,
    the tiny bundle) and from the engine's thread during generation, so a block around one call
    cannot catch them; each filter drops only its one message and sits on its one logger.
    Installed once, by ``import langchain_pandagpt``.
    """
    for name, prefix in _BNB_NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotice) for f in logger.filters):
            logger.addFilter(_DropNotice(prefix))


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Silences exactly the outputs listed in the module docstring while the block runs."""
    drop_bitsandbytes_notices()
    with warnings.catch_warnings(), _no_local_bars():
        warnings.filterwarnings(
            "ignore", message=_CHECKPOINTING_WARNING, category=FutureWarning, module=r"transformers"
        )
        yield


@contextmanager
def _no_local_bars() -> Iterator[None]:
    """transformers' bars named in :data:`QUIET_BARS` become no-ops; others draw as before."""
    from transformers.utils import logging as transformers_logging

    set_hook: Callable[..., Any] | None = getattr(transformers_logging, "set_tqdm_hook", None)
    if set_hook is None:  # an older transformers without hooks: no bars during the block
        enabled = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()
        try:
            yield
        finally:
            if enabled:
                transformers_logging.enable_progress_bar()
        return
    previous: Callable[..., Any] | None = None

    def hook(factory: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if kwargs.get("desc") in QUIET_BARS:
            return transformers_logging.EmptyTqdm(*args, **kwargs)
        if previous is not None:
            return previous(factory, args, kwargs)
        return factory(*args, **kwargs)

    previous = set_hook(hook)
    try:
        yield
    finally:
        set_hook(previous)
