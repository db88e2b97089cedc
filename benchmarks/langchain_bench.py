"""LangChain integration benchmarks: each section is a function returning table rows.

Run ``python benchmarks/langchain_bench.py`` to print every section.

The indexing section builds a folder of mixed media (JPEG/PNG images, WAV audio, short MP4
clips, IMU ``.npy`` windows) in a temporary directory and times ``MediaIndex.index_directory``
three ways: cold (every file decoded and encoded, vectors written to the disk cache), warm (a
fresh index over the same cache: files are hashed and read back, nothing is encoded) and a
re-index of the unchanged folder (size and mtime only). Towers are loaded before timing so the
cold figure is encoding, not checkpoint loading. Without ``--checkpoint`` a tiny random
ImageBind is used: the cold figure is then dominated by decoding and preprocessing, which
does not depend on the model size.

The chat section times ``ChatPandaGPT`` against the engine it wraps, on the same conversations
and decoding (greedy, 32 new tokens): ``invoke`` against ``GenerationEngine.generate`` (the
LangChain overhead: message conversion, callbacks, result objects), and ``abatch`` of 8
conversations against 8 sequential ``invoke`` calls. Without ``--bundle`` it runs on a tiny
random bundle, where decoding is cheap, so the overhead share is the worst case.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import av
import numpy as np
import soundfile
import torch
from langchain_core.language_models import LanguageModelInput
from PIL import Image

from langchain_pandagpt.chat_models import ChatPandaGPT
from langchain_pandagpt.conversation import Message
from langchain_pandagpt.embeddings import ImageBindEmbeddings
from langchain_pandagpt.generation.engine import SamplingParams
from langchain_pandagpt.imagebind.checkpoint import save_imagebind_safetensors
from langchain_pandagpt.imagebind.model import ImageBindModel
from langchain_pandagpt.media_rag import MediaIndex
from langchain_pandagpt.model.tiny import TINY_IMAGEBIND, create_tiny_checkpoint

Row = dict[str, object]

#: Share of each kind of file in the benchmark folder (the rest are IMU windows).
MIX = {"image": 0.4, "audio": 0.25, "video": 0.15}


def _write_image(path: Path, rng: np.random.Generator) -> None:
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(path)


def _write_audio(path: Path, rng: np.random.Generator) -> None:
    seconds = rng.uniform(2.0, 6.0)
    soundfile.write(
        path, (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000
    )


def _write_video(path: Path, rng: np.random.Generator, seconds: int = 3, fps: int = 10) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for _ in range(seconds * fps):
            pixels = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_imu(path: Path, rng: np.random.Generator) -> None:
    np.save(path, rng.standard_normal((6, 2000)).astype(np.float32))


def make_media_folder(root: Path, count: int = 200, seed: int = 0) -> dict[str, int]:
    """Writes ``count`` mixed media files into ``root``; returns how many of each kind."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    counts = {kind: int(count * share) for kind, share in MIX.items()}
    counts["imu"] = count - sum(counts.values())
    writers: dict[str, tuple[Callable[[Path, np.random.Generator], None], str]] = {
        "image": (_write_image, ".jpg"),
        "audio": (_write_audio, ".wav"),
        "video": (_write_video, ".mp4"),
        "imu": (_write_imu, ".imu.npy"),
    }
    for kind, number in counts.items():
        write, suffix = writers[kind]
        for index in range(number):
            png = kind == "image" and index % 2 == 1  # half the images as PNG
            write(root / f"{kind}_{index:04d}{'.png' if png else suffix}", rng)
    return counts


def _timed_index(
    embeddings: ImageBindEmbeddings, folder: Path, index: MediaIndex | None = None
) -> tuple[MediaIndex, float]:
    if index is None:
        index = MediaIndex(embeddings)
    start = time.perf_counter()
    index.index_directory(folder, show_progress=False)
    return index, time.perf_counter() - start


def indexing_section(
    count: int = 200, checkpoint: Path | None = None, device: str = "cpu"
) -> list[Row]:
    """Indexing throughput (files/s) of a mixed folder: cold cache, warm cache, no-op re-index."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if checkpoint is None:
            model = ImageBindModel(TINY_IMAGEBIND)
            model.init_random_weights(torch.Generator().manual_seed(0))
            checkpoint = save_imagebind_safetensors(model, work / "tiny.safetensors")
        counts = make_media_folder(work / "media", count)
        warmup = work / "warmup"
        make_media_folder(warmup, count=10, seed=1)

        def embeddings() -> ImageBindEmbeddings:
            return ImageBindEmbeddings(
                checkpoint=checkpoint, device=device, cache_dir=work / "cache"
            )

        MediaIndex(embeddings()).index_directory(warmup, show_progress=False)  # load towers
        index, cold = _timed_index(embeddings(), work / "media")
        _, warm = _timed_index(embeddings(), work / "media")
        _, noop = _timed_index(embeddings(), work / "media", index)
    mix = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    return [
        {
            "section": "indexing",
            "case": name,
            "files": count,
            "seconds": round(seconds, 3),
            "files_per_s": round(count / seconds, 1),
            "mix": mix,
        }
        for name, seconds in [
            ("cold cache (decode + encode)", cold),
            ("warm cache (new index, vectors from disk)", warm),
            ("re-index unchanged folder", noop),
        ]
    ]


def _seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _invoke_each(llm: ChatPandaGPT, prompts: list[LanguageModelInput]) -> None:
    for prompt in prompts:
        llm.invoke(prompt)


def chat_section(
    bundle: Path | None = None, device: str = "cpu", new_tokens: int = 32, repeats: int = 30
) -> list[Row]:
    """ChatPandaGPT ``invoke`` overhead over the raw engine, and ``abatch`` of 8 against 8
    sequential ``invoke`` calls (medians of ``repeats`` interleaved runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        if bundle is None:
            bundle = create_tiny_checkpoint(Path(tmp) / "tiny")
        llm = ChatPandaGPT(model=str(bundle), device=device, max_tokens=new_tokens)
        engine = llm.engine
        params = SamplingParams(max_new_tokens=new_tokens)
        prompt = "Describe the picture in detail."
        usage = llm.invoke(prompt).usage_metadata
        raw_times, invoke_times = [], []
        for _ in range(repeats):  # interleaved, so drift hits both alike
            raw_times.append(_seconds(lambda: engine.generate([Message("human", prompt)], params)))
            invoke_times.append(_seconds(lambda: llm.invoke(prompt)))
        raw, invoke = statistics.median(raw_times), statistics.median(invoke_times)

        def prompts(run: int) -> list[LanguageModelInput]:  # fresh texts: no cross-run reuse
            return [f"Question {run}.{i}: what is in the picture?" for i in range(8)]

        sequential_times, batch_times = [], []
        for run in range(max(3, repeats // 5)):
            sequential = prompts(2 * run + 1)
            sequential_times.append(_seconds(partial(_invoke_each, llm, sequential)))
            batch_times.append(_seconds(partial(asyncio.run, llm.abatch(prompts(2 * run)))))
        sequential_s = statistics.median(sequential_times)
        batch_s = statistics.median(batch_times)
    generated = usage["output_tokens"] if usage else new_tokens
    return [
        {
            "section": "chat",
            "case": "engine.generate (raw)",
            "seconds": round(raw, 4),
            "ratio": "1.00",
            "note": f"{generated} new tokens, greedy",
        },
        {
            "section": "chat",
            "case": "ChatPandaGPT.invoke",
            "seconds": round(invoke, 4),
            "ratio": f"{invoke / raw:.3f}",
            "note": f"overhead {100 * (invoke / raw - 1):+.1f}% (target <= +5%)",
        },
        {
            "section": "chat",
            "case": "8 x sequential invoke",
            "seconds": round(sequential_s, 4),
            "ratio": "1.00",
            "note": "8 different conversations",
        },
        {
            "section": "chat",
            "case": "abatch of 8",
            "seconds": round(batch_s, 4),
            "ratio": f"{sequential_s / batch_s:.2f}x faster",
            "note": "one engine batch (target >= 4x)",
        },
    ]


def print_table(rows: list[Row]) -> None:
    """Prints rows as an aligned text table (columns from the first row)."""
    if not rows:
        return
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(row.get(c, ""))) for row in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="files in the media folder")
    parser.add_argument("--checkpoint", type=Path, help="ImageBind checkpoint (default: tiny)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bundle", type=Path, help="PandaGPT bundle for chat (default: tiny)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--skip-indexing", action="store_true", help="chat section only")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_indexing:
        print_table(indexing_section(args.count, args.checkpoint, args.device))
        print()
    print_table(chat_section(args.bundle, args.device))


if __name__ == "__main__":
    main()
