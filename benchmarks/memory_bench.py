"""Long-running memory: does a serving process grow, and how many ImageBinds does it hold?

Run ``python benchmarks/memory_bench.py`` (``--help`` for the knobs). Two measurements on a tiny
bundle, each in this process:

* ``schemas``: structured output with N distinct JSON schemas (a new grammar each) through
  ``ChatPandaGPT.with_structured_output``; prints RSS, the live grammars and the engine's prefix
  cache every N/4 calls. The registry keeps 64 grammars (and their token masks) and the prefix
  cache its byte and entry bounds, so all three must stop growing (the prefix cache fills up to
  its bound first: ``--no-prefix-cache`` shows the rest alone).
* ``server``: the OpenAI-compatible app answers chat and embedding requests in-process (ASGI);
  prints how many ImageBind models are alive afterwards (one: the chat model's towers also
  serve ``/v1/embeddings``) and the RSS.

RSS is read from ``/proc/self/status`` (VmRSS, VmHWM).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, create_model

from langchain_pandagpt.chat_models import ChatPandaGPT
from langchain_pandagpt.generation import registry
from langchain_pandagpt.imagebind.model import ImageBindModel
from langchain_pandagpt.model.tiny import create_tiny_checkpoint
from langchain_pandagpt.structured.grammar import JsonGrammar


def _rss_mib() -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def _alive(kind: type) -> int:
    gc.collect()
    return sum(isinstance(obj, kind) for obj in gc.get_objects())


def schemas(bundle: Path, count: int, prefix_cache: bool) -> list[dict[str, Any]]:
    llm = ChatPandaGPT(model=str(bundle), max_tokens=8)
    cache = llm.engine._prefix_cache
    if not prefix_cache:
        cache.max_bytes = 0
    rows = []
    for index in range(count):
        fields: dict[str, Any] = {f"field_{index}": (int, ...), "note": (str, ...)}
        schema: type[BaseModel] = create_model(f"Answer{index}", **fields)
        llm.with_structured_output(schema).invoke("Fill in the form.")
        if (index + 1) % max(count // 4, 1) == 0:
            rss, peak = _rss_mib()
            grammars = _alive(JsonGrammar)
            kv = cache.nbytes / 2**20
            row = {"calls": index + 1, "rss_mib": rss, "grammars": grammars, "prefix_mib": kv}
            rows.append(row)
            print(
                f"{index + 1:5d} schemas  RSS {rss:7.1f} MiB (peak {peak:7.1f})  grammars alive "
                f"{grammars:3d}  prefix cache {len(cache):4d} entries {kv:6.1f} MiB"
            )
    return rows


def server(bundle: Path, requests: int) -> dict[str, Any]:
    import base64
    import io

    import httpx
    import numpy as np
    from PIL import Image

    from langchain_pandagpt.serving.server import app_for_bundle

    app = app_for_bundle(bundle)
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    image = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    chat = {
        "model": "tiny-pandagpt-seed0",
        "max_tokens": 8,
        "temperature": 0,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image}},
                    {"type": "text", "text": "What is it?"},
                ],
            }
        ],
    }
    embed = {
        "model": "imagebind",
        "input": ["a cat", {"type": "image_url", "image_url": {"url": image}}],
    }

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for _ in range(requests):
                (await client.post("/v1/chat/completions", json=chat)).raise_for_status()
                (await client.post("/v1/embeddings", json=embed)).raise_for_status()

    import asyncio

    started = time.perf_counter()
    asyncio.run(run())
    rss, peak = _rss_mib()
    result = {
        "requests": 2 * requests,
        "seconds": round(time.perf_counter() - started, 2),
        "imagebind_models_alive": _alive(ImageBindModel),
        "rss_mib": rss,
        "peak_mib": peak,
    }
    print(
        f"server: {2 * requests} requests (chat + embeddings), ImageBind models alive: "
        f"{result['imagebind_models_alive']}, RSS {rss:.1f} MiB"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemas", type=int, default=200, help="distinct schemas to run")
    parser.add_argument("--requests", type=int, default=20, help="chat+embedding request pairs")
    parser.add_argument(
        "--no-prefix-cache", action="store_true", help="turn the engine's prefix cache off"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        bundle = create_tiny_checkpoint(Path(folder) / "tiny", seed=0)
        report = {"schemas": schemas(bundle, args.schemas, not args.no_prefix_cache)}
        registry.clear()
        report["server"] = server(bundle, args.requests)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
