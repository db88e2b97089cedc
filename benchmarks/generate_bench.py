"""Generation engine benchmarks on CPU: throughput, batching, latency and prefix reuse.

Run ``python benchmarks/generate_bench.py`` (``--help`` for the knobs). Two random models:

* ``tiny``: the CI bundle of :func:`~langchain_pandagpt.model.tiny.create_tiny_checkpoint` (a
  2-layer, 64-wide LLaMA);
* ``100m``: the same bundle with its LLM swapped for a random LLaMA of hidden 768, 12 layers,
  12 heads, FFN 2048 over the tiny tokenizer (86M parameters, 85M of them in the layers), and
  its adapter rebuilt for that width with the tiny-checkpoint adapter code.

For every (model, precision) it measures, greedy and with ``--new-tokens`` new tokens at most:

* single-stream tokens/s: 8 prompts answered one after the other;
* batch-8 tokens/s: the same 8 prompts in one ``generate_batch`` (in fp32 the outputs are
  identical, so the ratio is a pure speed-up; "same output" says whether they were);
* both also in the decode phase alone ("decode ..."): end-to-end time minus the time to answer
  the same prompts with one token. On a CPU, prefilling 8 prompts at once is compute-bound and
  costs 8x one prompt, so end-to-end batch ratios understate what batching buys per step;
* concurrent-8 tokens/s: the 8 prompts submitted from 8 threads at once (dynamic batching);
* time to first token: ``generate`` of one prompt with ``max_new_tokens=1``;
* turn-5 latency: time to first token of the fifth turn of a conversation (an image and four
  earlier exchanges with ~100-token answers). "reuse" runs it right after generating turn 4
  (forced to the history's answer), so the prefix cache holds what a real chat leaves and only
  the new question is computed; "recompute" runs it on an engine without a prefix cache.

Throughputs are the best of ``--repeats`` runs, latencies the median of ``--latency-repeats``
(millisecond timings on a shared CPU need more samples). Targets (ratios, same
machine, same run): batch-8 >= 4x single-stream tokens/s, and turn-5 with reuse <= 1/3 of the
recomputing latency. The engines run with ``batch_wait_s=0`` (except the concurrent case, which
needs the window), so single requests pay no batching delay. On a shared machine prefer
``--threads 1``: idle OpenMP threads spin while other processes hold the cores.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoTokenizer, LlamaForCausalLM

from langchain_pandagpt.conversation import MediaItem, Message
from langchain_pandagpt.generation.engine import GenerationEngine, GenerationResult, SamplingParams
from langchain_pandagpt.generation.prompt import TURN_END
from langchain_pandagpt.model.adapter import write_reference_checkpoint
from langchain_pandagpt.model.bundle import PRECISIONS, load_pandagpt
from langchain_pandagpt.model.modeling import PandaGPTModel
from langchain_pandagpt.model.tiny import (
    TINY_IMAGEBIND,
    build_tiny_adapter,
    create_tiny_checkpoint,
    llama_config_for,
)

Row = dict[str, object]
MODELS = ("tiny", "100m")
QUESTIONS = (
    "What is in this image?",
    "Describe the picture in detail.",
    "What can you hear in the background of this clip?",
    "What happens in the video, from the beginning to the end?",
    "Is it warm or cold in this thermal image, and where is the heat?",
    "How many animals are there, and what are they doing?",
    "What color is the ball and where is it lying?",
    "Write a short poem about the scene.",
)
ANSWER = (
    "The photo shows a busy street at night, with cars, bright shop windows and people walking "
    "under umbrellas. A dog is barking while birds sing in the background, and the light "
    "suggests early morning. There are two people, three chairs and a small table in the room. "
    "She is holding a cup of coffee and reading a book by the window, and the audio clip "
    "contains music, laughter and the sound of rain on the roof."
)


def build_bundle(kind: str, root: Path) -> Path:
    """The tiny CI bundle, or (``100m``) the same bundle with a ~100M-parameter random LLM."""
    bundle = create_tiny_checkpoint(root / kind)
    if kind == "tiny":
        return bundle
    tokenizer = AutoTokenizer.from_pretrained(bundle / "llm")
    config = llama_config_for(
        tokenizer, hidden_size=768, intermediate_size=2048, num_layers=12, num_heads=12
    )
    torch.manual_seed(1)
    llm = LlamaForCausalLM(config).eval()  # Hugging Face's init: speed does not need lively logits
    llm.save_pretrained(bundle / "llm")
    adapter = build_tiny_adapter(
        llm, TINY_IMAGEBIND.out_embed_dim, torch.Generator().manual_seed(1)
    )
    write_reference_checkpoint(adapter, bundle / "pytorch_model.pt")
    return bundle


def image(seed: int) -> MediaItem:
    """A precomputed, unit-norm ImageBind embedding (the encoder is not what is measured)."""
    vector = torch.randn(
        TINY_IMAGEBIND.out_embed_dim, generator=torch.Generator().manual_seed(seed)
    )
    return MediaItem("image", vector / vector.norm(), is_embedding=True)


def prompts() -> list[list[Message]]:
    return [[Message("human", q, [image(i)])] for i, q in enumerate(QUESTIONS)]


def conversation(turns: int) -> list[Message]:
    """``turns`` questions about one image, with a fixed ~100-token answer to each earlier
    one."""
    messages: list[Message] = []
    for turn in range(turns):
        media = [image(100)] if turn == 0 else []
        messages.append(Message("human", QUESTIONS[turn], media))
        if turn < turns - 1:
            messages.append(Message("assistant", ANSWER))
    return messages


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def best_rate(
    run: Callable[[], Sequence[GenerationResult]], repeats: int
) -> tuple[float, Sequence[GenerationResult]]:
    """Best completion tokens/s of ``repeats`` runs (noise on a shared CPU only slows runs
    down), and the results of the last run."""
    best = 0.0
    results: Sequence[GenerationResult] = ()
    for _ in range(repeats):
        start = time.perf_counter()
        results = run()
        best = max(best, sum(r.completion_tokens for r in results) / (time.perf_counter() - start))
    return best, results


def decode_rate(rate: float, results: Sequence[GenerationResult], prefill_s: float) -> float:
    """Tokens/s after the first token of each answer: end-to-end time minus the prefill time
    (answering with ``max_new_tokens=1``), i.e. the decode phase alone."""
    tokens = sum(r.completion_tokens for r in results)
    return (tokens - len(results)) / max(tokens / rate - prefill_s, 1e-9)


def throughput(
    engine: GenerationEngine, params: SamplingParams, repeats: int
) -> tuple[float, float, float, float, bool]:
    """Single-stream and batch-8 tokens/s, end to end and in the decode phase alone, and
    whether both gave the same answers (they do in fp32; lower precisions round padded
    batches differently, so greedy paths may part)."""
    conversations = prompts()
    first = SamplingParams(max_new_tokens=1)
    engine.generate_batch(conversations, params)  # warm-up
    single, one_by_one = best_rate(
        lambda: [engine.generate(c, params) for c in conversations], repeats
    )
    batch, batched = best_rate(lambda: engine.generate_batch(conversations, params), repeats)
    single_prefill = min(
        timed(lambda: [engine.generate(c, first) for c in conversations]) for _ in range(repeats)
    )
    batch_prefill = min(
        timed(lambda: engine.generate_batch(conversations, first)) for _ in range(repeats)
    )
    same = [r.token_ids for r in batched] == [r.token_ids for r in one_by_one]
    return (
        single,
        batch,
        decode_rate(single, one_by_one, single_prefill),
        decode_rate(batch, batched, batch_prefill),
        same,
    )


def concurrent(model: PandaGPTModel, params: SamplingParams, repeats: int) -> float:
    """Tokens/s of the 8 prompts submitted from 8 threads at once (default batching window)."""
    conversations = prompts()
    with GenerationEngine(model, prefix_cache_bytes=0) as engine:
        engine.generate_batch(conversations, params)  # warm-up

        def together() -> list[GenerationResult]:
            with ThreadPoolExecutor(len(conversations)) as pool:
                handles = list(pool.map(lambda c: engine.submit(c, params), conversations))
            return [handle.result() for handle in handles]

        return best_rate(together, repeats)[0]


def turn5(model: PandaGPTModel, repeats: int) -> tuple[float, float, int, int]:
    """Median turn-5 time to first token with reuse and recomputing; cached and prompt
    positions. Turn 4 is generated for real but forced to the fixed answer, as a model that
    gave that answer would have produced it, so the cache holds what a real chat leaves."""
    first = SamplingParams(max_new_tokens=1)
    answer = model.tokenizer.encode(ANSWER + TURN_END, add_special_tokens=False)

    def forced(completion: list[int], logits: Tensor) -> Tensor:
        out = torch.full_like(logits, float("-inf"))
        out[answer[len(completion)]] = 0.0
        return out

    turn4 = SamplingParams(max_new_tokens=len(answer), logits_processor=forced)
    history, question = conversation(4), conversation(5)
    reuse, recompute, cached, prompt = [], [], 0, 0
    with GenerationEngine(model, prefix_cache_bytes=0, batch_wait_s=0) as engine:
        engine.generate(question, first)  # warm-up
        recompute = [timed(lambda: engine.generate(question, first)) for _ in range(repeats)]
    for _ in range(repeats):
        with GenerationEngine(model, batch_wait_s=0) as engine:
            assert engine.generate(history, turn4).text == ANSWER
            start = time.perf_counter()
            result = engine.generate(question, first)
            reuse.append(time.perf_counter() - start)
            cached, prompt = result.usage.cached_tokens, result.prompt_tokens
    return statistics.median(reuse), statistics.median(recompute), cached, prompt


def measure(
    kind: str, bundle: Path, precision: str, new_tokens: int, repeats: int, latency_repeats: int
) -> Row:
    model = load_pandagpt(bundle, precision=precision)  # type: ignore[arg-type]
    params = SamplingParams(max_new_tokens=new_tokens)
    first = SamplingParams(max_new_tokens=1)
    with GenerationEngine(model, prefix_cache_bytes=0, batch_wait_s=0) as engine:
        single, batch, single_decode, batch_decode, same = throughput(engine, params, repeats)
        ttft = statistics.median(
            timed(lambda: engine.generate(prompts()[0], first)) for _ in range(latency_repeats)
        )
    together = concurrent(model, params, repeats)
    reuse, recompute, cached, prompt = turn5(model, latency_repeats)
    return {
        "model": kind,
        "precision": precision,
        "single tok/s": single,
        "batch8 tok/s": batch,
        "batch x": batch / single,
        "decode single tok/s": single_decode,
        "decode batch8 tok/s": batch_decode,
        "decode batch x": batch_decode / single_decode,
        "same output": same,
        "concurrent8 tok/s": together,
        "TTFT ms": 1000 * ttft,
        "turn5 reuse ms": 1000 * reuse,
        "turn5 recompute ms": 1000 * recompute,
        "reuse ratio": reuse / recompute,
        "cached/prompt": f"{cached}/{prompt}",
    }


def print_table(rows: Sequence[Row]) -> None:
    def cell(value: object) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    columns = list(rows[0])
    widths = [max(len(c), *(len(cell(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(cell(row[c]).rjust(w) for c, w in zip(columns, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma list of tiny,100m")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="comma list")
    parser.add_argument("--new-tokens", type=int, default=32, help="max new tokens per answer")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per figure (best throughput, median latency)"
    )
    parser.add_argument("--latency-repeats", type=int, default=7, help="runs per latency (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # bitsandbytes logs a warning per int8 matmul on CPU (fp32 activations are cast to fp16).
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for kind in args.models.split(","):
            bundle = build_bundle(kind, Path(scratch))
            for precision in args.precisions.split(","):
                rows.append(
                    measure(
                        kind,
                        bundle,
                        precision,
                        args.new_tokens,
                        args.repeats,
                        args.latency_repeats,
                    )
                )
                print(f"done: {kind} {precision}", flush=True)
    print(f"\nCPU, {torch.get_num_threads()} threads, greedy, {args.new_tokens} new tokens max\n")
    print_table(rows)
    print()
    for row in rows:
        batch_x, reuse = float(row["batch x"]), float(row["reuse ratio"])  # type: ignore[arg-type]
        decode_x = float(row["decode batch x"])  # type: ignore[arg-type]
        print(
            f"{row['model']:>5} {row['precision']:>5}: "
            f"batch-8 {batch_x:.2f}x single end to end, {decode_x:.2f}x decode (target >= 4x) "
            f"{'PASS' if batch_x >= 4 else 'PASS (decode)' if decode_x >= 4 else 'FAIL'}; "
            f"turn-5 with reuse {reuse:.2f} of recompute (target <= 0.33) "
            f"{'PASS' if reuse <= 1 / 3 else 'FAIL'}"
        )


if __name__ == "__main__":
    main()
