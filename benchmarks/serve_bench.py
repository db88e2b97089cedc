"""Serving benchmark: requests/s and latency of ``pandagpt serve`` under concurrent streaming.

Starts a real server on loopback (``pandagpt serve``, its own process) on a bundle (default: a
fresh tiny bundle), then for each concurrency level keeps that many streaming chat clients busy
(each sends its next request as soon as the previous one ends) until ``--requests`` requests
finished or ``--seconds`` passed. Reports requests/s, generated tokens/s, latency p50/p95 and
time to first token p50, plus the engine's batching counters. Every request asks for the same
number of tokens with greedy decoding, so levels are comparable.

Target: 16 clients give at least 4x the throughput of 1 client (``--check`` exits 1 if not).

    python benchmarks/serve_bench.py [--bundle DIR] [--levels 1 4 16] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from langchain_pandagpt.serving.server import serve_in_subprocess

PROMPTS = [
    "What is in this picture?",
    "Describe the sound you hear.",
    "Tell me a short story about a panda.",
    "What happens in the video?",
]


@dataclass(frozen=True)
class Level:
    clients: int
    requests: int
    seconds: float
    requests_per_s: float
    tokens_per_s: float
    p50_latency_s: float
    p95_latency_s: float
    p50_first_token_s: float
    batches: int
    largest_batch: int


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _one(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """One streaming request: (latency, time to first token, completion tokens)."""
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    latency = time.perf_counter() - start
    return latency, first if first is not None else latency, tokens


async def _level(
    base: str, clients: int, max_requests: int, max_seconds: float, max_tokens: int
) -> Level:
    async with httpx.AsyncClient(base_url=base, timeout=300) as client:
        before = (await client.get("/v1/stats")).json()
        results: list[tuple[float, float, int]] = []
        deadline = time.perf_counter() + max_seconds
        started = 0

        async def worker(index: int) -> None:
            nonlocal started
            while started < max_requests and time.perf_counter() < deadline:
                started += 1
                prompt = PROMPTS[(started + index) % len(PROMPTS)]
                results.append(await _one(client, prompt, max_tokens))

        begin = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        elapsed = time.perf_counter() - begin
        after = (await client.get("/v1/stats")).json()
    latencies = [r[0] for r in results]
    return Level(
        clients=clients,
        requests=len(results),
        seconds=round(elapsed, 2),
        requests_per_s=round(len(results) / elapsed, 2),
        tokens_per_s=round(sum(r[2] for r in results) / elapsed, 1),
        p50_latency_s=round(statistics.median(latencies), 3),
        p95_latency_s=round(_percentile(latencies, 0.95), 3),
        p50_first_token_s=round(statistics.median(r[1] for r in results), 3),
        batches=after["batches"] - before["batches"],
        largest_batch=after["largest_batch"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: a tiny one)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=128, help="requests per level, at most")
    parser.add_argument("--seconds", type=float, default=30.0, help="time per level, at most")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, help="server's torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 if 16 clients < 4x 1")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        bundle = args.bundle
        if bundle is None:
            from langchain_pandagpt.model.tiny import create_tiny_checkpoint

            bundle = create_tiny_checkpoint(Path(scratch) / "tiny")
        options = ["--model-name", "bench", "--device", "cpu", "--log-level", "warning"]
        options += ["--max-batch-size", str(args.max_batch_size)]
        options += ["--threads", str(args.threads)] if args.threads else []
        with serve_in_subprocess(bundle, *options) as base:
            asyncio.run(_level(base, 2, 4, 30, args.max_tokens))  # warm-up
            levels = [
                asyncio.run(_level(base, n, args.requests, args.seconds, args.max_tokens))
                for n in args.levels
            ]

    header = list(asdict(levels[0]))
    print(" | ".join(header))
    for level in levels:
        print(" | ".join(str(value) for value in asdict(level).values()))
    by_clients = {level.clients: level for level in levels}
    speedup = None
    if 1 in by_clients and 16 in by_clients:
        speedup = by_clients[16].requests_per_s / by_clients[1].requests_per_s
        verdict = "meets" if speedup >= 4 else "MISSES"
        print(f"16 clients / 1 client throughput: {speedup:.2f}x ({verdict} the 4x target)")
    if args.json:
        report = {
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "levels": [asdict(x) for x in levels],
        }
        args.json.write_text(json.dumps({**report, "speedup_16_vs_1": speedup}, indent=2))
    if args.check and (speedup is None or speedup < 4):
        sys.exit(1)


if __name__ == "__main__":
    main()
