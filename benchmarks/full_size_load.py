"""Full-size memory and latency: a Vicuna-7B-shaped bundle and a 7B-shaped ``apply-delta``.

Not run in CI (it writes ~40 GB and needs ~18 GB of free memory). Run::

    python benchmarks/full_size_load.py --workdir /work/tmp-fullsize

It writes, tensor by tensor (never a whole model in memory), random fp16 weights of the real
shapes, and measures each case in a fresh subprocess, one at a time:

* ``load``: a bundle whose LLM has Vicuna-7B's architecture (hidden 4096, 32 layers, 32 heads,
  FFN 11008, vocabulary 32001, untied head) as safetensors shards of ``--llm-shard-gb``, the
  tiny ImageBind, and a reference adapter of the real layout (LoRA r=32 on q/k/v/o of every
  layer, a projection from the tiny ImageBind's width to 4096). For each precision
  (``--precisions``, default bf16, int8, nf4): load time, peak RSS during the load and
  overall, the bytes of the loaded weights (parameters and buffers, quantization scales
  included), the time to the first token of a short prompt with one image, and decode
  tokens/s over ``--new-tokens`` more. Target: peak <= 1.2 x loaded weights + 1 GiB.
* ``apply``: a LLaMA-1-7B-shaped base (vocabulary 32000, ``.bin`` shards of
  ``--base-shard-gb``) and a v0-shaped delta (vocabulary 32001, safetensors shards of
  ``--delta-shard-gb``, other boundaries), then ``apply_delta`` into a third folder: time and
  peak RSS. Target: peak <= 2 x the largest source shard + 1 GiB.

The tokenizer is the tiny bundle's, padded with ordinary added tokens to LLaMA's 32000 (plus
``[PAD]`` where Vicuna v0 has it), so vocabulary sizes and checks are the real ones. Peak RSS
is the child's ``ru_maxrss``: it counts memory-mapped file pages while they are mapped, so it
is an upper bound of what the process needs. ``--size 1b`` runs the same on a 1.3B-parameter
shape (a quick check of the script); files are deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig

GIB = 1 << 30
SHAPES = {  # hidden, intermediate, layers, heads
    "7b": (4096, 11008, 32, 32),
    "1b": (2048, 5504, 24, 16),
}
LLAMA_VOCAB = 32000
LORA_RANK = 32
POOL = 1 << 26  # random values tiled into every tensor (generating 7B normals takes minutes)


# ---------------------------------------------------------------------------- writing models


def tokenizer_with_vocab(size: int, pad: bool) -> Any:
    """The tiny LLaMA-style tokenizer grown to ``size`` tokens (+ ``[PAD]``)."""
    from langchain_pandagpt.model.tiny import PAD_TOKEN, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(pad=False)
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(size - len(tokenizer))])
    if pad:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer


def llama_config(size: str, vocab: int) -> LlamaConfig:
    hidden, intermediate, layers, heads = SHAPES[size]
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        dtype="float16",
    )


def tensor_shapes(config: LlamaConfig) -> Iterator[tuple[str, tuple[int, ...]]]:
    """LlamaForCausalLM's parameters in state-dict order."""
    hidden, inner = config.hidden_size, config.intermediate_size
    yield "model.embed_tokens.weight", (config.vocab_size, hidden)
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}"
        for proj in ("q", "k", "v", "o"):
            yield f"{prefix}.self_attn.{proj}_proj.weight", (hidden, hidden)
        yield f"{prefix}.mlp.gate_proj.weight", (inner, hidden)
        yield f"{prefix}.mlp.up_proj.weight", (inner, hidden)
        yield f"{prefix}.mlp.down_proj.weight", (hidden, inner)
        yield f"{prefix}.input_layernorm.weight", (hidden,)
        yield f"{prefix}.post_attention_layernorm.weight", (hidden,)
    yield "model.norm.weight", (hidden,)
    yield "lm_head.weight", (config.vocab_size, hidden)


class RandomSource:
    """fp16 values of a given std, tiled from one random pool at random offsets."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.pool = torch.randn(POOL, generator=self.generator).half()

    def tensor(self, shape: tuple[int, ...], std: float) -> torch.Tensor:
        if len(shape) == 1:
            return torch.ones(shape, dtype=torch.float16)
        numel = 1
        for dim in shape:
            numel *= dim
        start = int(torch.randint(POOL, (1,), generator=self.generator))
        pool = self.pool
        if start + numel > POOL:
            pool = pool.repeat((start + numel) // POOL + 1)
        flat = pool[start : start + numel]
        return (flat * std).reshape(shape)


def write_random_llm(
    folder: Path, config: LlamaConfig, *, layout: str, shard_bytes: int, seed: int, std: float
) -> int:
    """Writes random fp16 weights of ``config``'s shapes in shards; returns the largest shard's
    size. Only one shard is ever in memory."""
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    source = RandomSource(seed)
    shards: list[dict[str, torch.Tensor]] = [{}]
    sizes = [0]
    names = list(tensor_shapes(config))
    files: list[str] = []
    weight_map: dict[str, str] = {}

    def flush() -> None:
        number = len(files) + 1
        if layout == "bin":
            name = f"pytorch_model-{number:05d}.bin"
            torch.save(shards[-1], folder / name)
        else:
            name = f"model-{number:05d}.safetensors"
            save_file(shards[-1], str(folder / name), metadata={"format": "pt"})
        files.append(name)
        weight_map.update(dict.fromkeys(shards[-1], name))
        shards[-1] = {}
        sizes.append(0)
        gc.collect()

    for name, shape in names:
        tensor = source.tensor(shape, std)
        if shards[-1] and sizes[-1] + tensor.nbytes > shard_bytes:
            flush()
        shards[-1][name] = tensor
        sizes[-1] += tensor.nbytes
    flush()
    index = "pytorch_model.bin.index.json" if layout == "bin" else "model.safetensors.index.json"
    total = sum(sizes)
    (folder / index).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
    )
    return max(sizes)


def build_bundle(root: Path, size: str, shard_gb: float) -> Path:
    """A bundle: random 7B-shaped LLM, tiny ImageBind, reference adapter of the real layout."""
    from langchain_pandagpt.imagebind.checkpoint import save_imagebind_safetensors
    from langchain_pandagpt.imagebind.model import ImageBindModel
    from langchain_pandagpt.model.adapter import (
        AdapterWeights,
        reference_lora_config,
        write_reference_checkpoint,
    )
    from langchain_pandagpt.model.manifest import AdapterSpec, BundleManifest
    from langchain_pandagpt.model.tiny import TINY_IMAGEBIND

    tokenizer = tokenizer_with_vocab(LLAMA_VOCAB, pad=True)
    config = llama_config(size, len(tokenizer))
    config.pad_token_id = tokenizer.pad_token_id
    write_random_llm(
        root / "llm",
        config,
        layout="safetensors",
        shard_bytes=int(shard_gb * GIB),
        seed=0,
        std=0.02,
    )
    tokenizer.save_pretrained(root / "llm")
    generator = torch.Generator().manual_seed(1)
    imagebind = ImageBindModel(TINY_IMAGEBIND)
    imagebind.init_random_weights(generator)
    save_imagebind_safetensors(imagebind, root / "imagebind.safetensors")
    hidden, width = config.hidden_size, TINY_IMAGEBIND.out_embed_dim
    lora = {}
    for layer in range(config.num_hidden_layers):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            lora[f"{prefix}.lora_A.weight"] = torch.randn(LORA_RANK, hidden).mul(0.01).half()
            lora[f"{prefix}.lora_B.weight"] = torch.randn(hidden, LORA_RANK).mul(0.01).half()
    adapter = AdapterWeights(
        config=reference_lora_config(LORA_RANK),
        lora=lora,
        projection_weight=torch.randn(hidden, width).half(),
        projection_bias=torch.zeros(hidden).half(),
    )
    write_reference_checkpoint(adapter, root / "pytorch_model.pt")
    spec = AdapterSpec(format="reference", path="pytorch_model.pt", vocab_size=len(tokenizer))
    BundleManifest(name=f"random-vicuna-{size}", adapter=spec).write(root)
    return root


def build_delta_pair(
    root: Path, size: str, base_gb: float, delta_gb: float
) -> tuple[Path, Path, int]:
    """A LLaMA-1-shaped base (.bin) and a v0-shaped delta (safetensors), sharded differently."""
    base_tokenizer = tokenizer_with_vocab(LLAMA_VOCAB, pad=False)
    base_config = llama_config(size, LLAMA_VOCAB)
    largest = write_random_llm(
        root / "base",
        base_config,
        layout="bin",
        shard_bytes=int(base_gb * GIB),
        seed=2,
        std=0.02,
    )
    base_tokenizer.save_pretrained(root / "base")
    delta_tokenizer = tokenizer_with_vocab(LLAMA_VOCAB, pad=True)
    delta_config = llama_config(size, LLAMA_VOCAB + 1)
    largest = max(
        largest,
        write_random_llm(
            root / "delta",
            delta_config,
            layout="safetensors",
            shard_bytes=int(delta_gb * GIB),
            seed=3,
            std=0.002,
        ),
    )
    delta_tokenizer.save_pretrained(root / "delta")
    return root / "base", root / "delta", largest


# ------------------------------------------------------------------------------ measuring


def peak_rss() -> int:
    """This process's peak resident set, in bytes.

    Linux's ``VmHWM`` belongs to the process's own address space; ``ru_maxrss`` would also
    count the parent's size at the moment it spawned this child (it survives ``exec``).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def loaded_bytes(modules: list[torch.nn.Module]) -> int:
    """Bytes of every parameter and buffer (each storage once), with bitsandbytes' scales."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            extras = [getattr(tensor, "SCB", None)]
            state = getattr(tensor, "quant_state", None)
            if state is not None:
                extras += [getattr(state, "absmax", None), getattr(state, "code", None)]
            for part in [tensor, *extras]:
                if isinstance(part, torch.Tensor) and part.data_ptr() not in seen:
                    seen.add(part.data_ptr())
                    total += part.numel() * part.element_size()
    return total


def child_load(bundle: Path, precision: str, new_tokens: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    from langchain_pandagpt.conversation import MediaItem, Message
    from langchain_pandagpt.generation.engine import GenerationEngine, SamplingParams
    from langchain_pandagpt.model.bundle import load_pandagpt

    before = peak_rss()
    start = time.perf_counter()
    model = load_pandagpt(bundle, precision=precision, device="cpu")  # type: ignore[arg-type]
    load_s = time.perf_counter() - start
    load_peak = peak_rss()
    weights = loaded_bytes([model.llm, model.imagebind, model.projection])
    width = model.projection.in_features
    vector = torch.randn(width, generator=torch.Generator().manual_seed(0))
    messages = [
        Message(
            "human",
            "What is in this image?",
            [MediaItem("image", vector / vector.norm(), is_embedding=True)],
        )
    ]
    one = SamplingParams(max_new_tokens=1)
    with GenerationEngine(model, prefix_cache_bytes=0, batch_wait_s=0) as engine:
        start = time.perf_counter()
        engine.generate(messages, one)  # the first call also loads kernels
        first_call_s = time.perf_counter() - start
        start = time.perf_counter()
        first = engine.generate(messages, one)
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        more = engine.generate(messages, SamplingParams(max_new_tokens=1 + new_tokens))
        total_s = time.perf_counter() - start
    decoded = more.completion_tokens - 1
    return {
        "case": f"load {precision}",
        "seconds": round(load_s, 1),
        "import_peak_gib": round(before / GIB, 2),
        "load_peak_gib": round(load_peak / GIB, 2),
        "peak_gib": round(peak_rss() / GIB, 2),
        "weights_gib": round(weights / GIB, 2),
        "target_gib": round((1.2 * weights + GIB) / GIB, 2),
        "ok": load_peak <= 1.2 * weights + GIB,
        "prompt_tokens": first.prompt_tokens,
        "first_call_s": round(first_call_s, 2),
        "first_token_s": round(first_s, 2),
        "decode_tokens": decoded,
        "decode_tok_s": round(decoded / max(total_s - first_s, 1e-9), 3) if decoded > 0 else None,
        "answer": more.text,
    }


def child_apply(base: Path, delta: Path, out: Path, largest: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    from langchain_pandagpt.model.delta import apply_delta

    before = peak_rss()
    start = time.perf_counter()
    apply_delta(base, delta, out, progress=False)
    seconds = time.perf_counter() - start
    peak = peak_rss()
    written = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    return {
        "case": "apply-delta",
        "seconds": round(seconds, 1),
        "import_peak_gib": round(before / GIB, 2),
        "peak_gib": round(peak / GIB, 2),
        "largest_shard_gib": round(largest / GIB, 2),
        "written_gib": round(written / GIB, 2),
        "target_gib": round((2 * largest + GIB) / GIB, 2),
        "ok": peak <= 2 * largest + GIB,
    }


def run_child(args: list[str]) -> dict[str, Any]:
    """Runs this script as a fresh child and returns the JSON its last line prints."""
    command = [sys.executable, __file__, *args]
    print("$", " ".join(command), file=sys.stderr, flush=True)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-4000:])
        return {"case": " ".join(args[:3]), "error": f"exit {result.returncode}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, Any]]) -> str:
    columns = [
        "case",
        "seconds",
        "load_peak_gib",
        "peak_gib",
        "weights_gib",
        "largest_shard_gib",
        "target_gib",
        "ok",
        "first_token_s",
        "decode_tok_s",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/work/tmp-fullsize"))
    parser.add_argument("--size", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--parts", default="load,apply", help="load, apply or both")
    parser.add_argument("--precisions", default="bf16,int8,nf4")
    parser.add_argument("--llm-shard-gb", type=float, default=3.0)
    parser.add_argument("--base-shard-gb", type=float, default=3.0)
    parser.add_argument("--delta-shard-gb", type=float, default=2.0)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="Keep the written files.")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, *rest = args.child
        if kind == "load":
            row = child_load(Path(rest[0]), rest[1], args.new_tokens, args.threads)
        else:
            row = child_apply(
                Path(rest[0]), Path(rest[1]), Path(rest[2]), int(rest[3]), args.threads
            )
        print(json.dumps(row))
        return

    parts = set(args.parts.split(","))
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        if "load" in parts:
            start = time.perf_counter()
            bundle = build_bundle(work / "bundle", args.size, args.llm_shard_gb)
            print(f"bundle written in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            for precision in args.precisions.split(","):
                common = ["--new-tokens", str(args.new_tokens), "--threads", str(args.threads)]
                rows.append(run_child(["--child", "load", str(bundle), precision, *common]))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            if not args.keep:
                shutil.rmtree(work / "bundle")
        if "apply" in parts:
            start = time.perf_counter()
            base, delta, largest = build_delta_pair(
                work / "pair", args.size, args.base_shard_gb, args.delta_shard_gb
            )
            print(f"base and delta written in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            out = work / "pair" / "vicuna"
            shutil.rmtree(out, ignore_errors=True)
            rows.append(
                run_child(
                    [
                        "--child",
                        "apply",
                        str(base),
                        str(delta),
                        str(out),
                        str(largest),
                        "--threads",
                        str(args.threads),
                    ]
                )
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(table(rows))
    print(json.dumps({"size": args.size, "rows": rows}))


if __name__ == "__main__":
    main()
