"""ImageBind benchmarks: each section is a function returning table rows (``list[dict]``).

Run ``python benchmarks/imagebind_bench.py`` to print every section.

The encoder section measures items/s per modality and dtype on randomly initialised weights
(speed does not depend on the values): ``--config huge`` is the released ``imagebind_huge``
architecture (slow on a laptop CPU, the number to report on a GPU), ``--config small`` a tiny
one for a quick smoke run. Inputs are the shapes the official loaders produce: an image
(3x224x224), a 77-token text, an audio file (3 clips of 128x204 mel), a video (15 views of
2x224x224 frames), depth and thermal maps (1x224x224) and an IMU window (6x2000).

The video section times
:func:`load_and_transform_video_data` with seeking against the full-decode baseline
(``seek=False``: decode every frame from the start, which is what decord-style readers cost)
on a synthetic phone-like clip: 60 s of 1280x720 H.264 at 30 fps, generated once with PyAV and
cached in the temp directory. The encoder uses x264's ``veryfast`` preset with a keyframe every
``gop`` frames (60 = 2 s, a common camera setting) and its default B-frames, so decoding after a
seek costs what it costs on real phone footage rather than on an all-intra file.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import torch

from langchain_pandagpt.imagebind.model import ImageBindConfig, ImageBindModel
from langchain_pandagpt.imagebind.video import load_and_transform_video_data

Row = dict[str, object]


def _frame(index: int, width: int, height: int, fps: int) -> np.ndarray:
    """A moving colour gradient with a sliding block: cheap to draw, not trivial to encode."""
    t = index / fps
    x = np.arange(width, dtype=np.float32)[None, :]
    y = np.arange(height, dtype=np.float32)[:, None]
    channels = [
        np.sin(x / 97.0 + 2.1 * t) + 0 * y,
        np.cos(y / 61.0 - 1.3 * t) + 0 * x,
        np.sin((x + y) / 143.0 + 0.7 * t),
    ]
    image = (127.5 + 127.5 * np.stack(channels, axis=-1)).astype(np.uint8)
    left = int((t * 211) % (width - 160))
    image[height // 3 : height // 3 + 120, left : left + 160] = (255 - index) % 256
    return image


def synthetic_video(
    seconds: int = 60, width: int = 1280, height: int = 720, fps: int = 30, gop: int = 60
) -> Path:
    """Path of the cached benchmark video, encoding it on first use (takes a while)."""
    directory = Path(tempfile.gettempdir()) / "langchain_pandagpt_bench"
    path = directory / f"synthetic_{seconds}s_{width}x{height}_{fps}fps_g{gop}.mp4"
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.mp4")
    with av.open(str(partial), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(gop), "crf": "23"}
        for index in range(seconds * fps):
            frame = av.VideoFrame.from_ndarray(_frame(index, width, height, fps), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    partial.rename(path)
    return path


def _best_times(function: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Fastest wall-clock and CPU (all threads) seconds over ``repeats`` runs.

    The minimum is the run least disturbed by other load; CPU time is reported too because
    wall time on a shared machine says little on its own.
    """
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu)


def video_preprocessing_section(repeats: int = 3, gop: int = 60) -> list[Row]:
    """Rows timing the video loader with seeking and with the full-decode baseline."""
    path = synthetic_video(gop=gop)
    seek_wall, seek_cpu = _best_times(lambda: load_and_transform_video_data([path]), repeats)
    full_wall, full_cpu = _best_times(
        lambda: load_and_transform_video_data([path], seek=False), repeats
    )
    workload = f"video 60 s 720p30 H.264, gop {gop} -> (1, 15, 3, 2, 224, 224)"
    row = {"section": "preprocessing", "workload": workload}
    return [
        {**row, "variant": "full decode", "wall s": full_wall, "cpu s": full_cpu},
        {
            **row,
            "variant": "seek (default)",
            "wall s": seek_wall,
            "cpu s": seek_cpu,
            "speed-up": f"{full_wall / seek_wall:.1f}x",
        },
    ]


#: One input item per modality, as the official loaders shape it (without the batch axis).
ENCODER_INPUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "image": ("vision", (3, 224, 224)),
    "text": ("text", (77,)),
    "audio": ("audio", (3, 1, 128, 204)),
    "video": ("vision", (15, 3, 2, 224, 224)),
    "depth": ("depth", (1, 224, 224)),
    "thermal": ("thermal", (1, 224, 224)),
    "imu": ("imu", (6, 2000)),
}

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

SMALL_CONFIG = ImageBindConfig.tiny()


def _encoder_batch(kind: str, batch: int, device: torch.device) -> torch.Tensor:
    _, shape = ENCODER_INPUTS[kind]
    if kind == "text":
        ids = torch.randint(1, 49406, (batch, *shape), device=device)
        ids[:, 0], ids[:, 20] = 49406, 49407  # start and end of text, like a short caption
        ids[:, 21:] = 0
        return ids
    return torch.randn(batch, *shape, device=device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def encoder_section(
    config_name: str = "small",
    dtypes: list[str] | None = None,
    kinds: list[str] | None = None,
    batch: int = 8,
    repeats: int = 3,
    device: str = "auto",
) -> list[Row]:
    """Rows of encoder throughput (items/s) per modality and dtype, random weights."""
    target = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    )
    config = ImageBindConfig.huge() if config_name == "huge" else SMALL_CONFIG
    rows: list[Row] = []
    for dtype_name in dtypes or list(DTYPES):
        model = ImageBindModel(config)
        model.init_random_weights(torch.Generator().manual_seed(0))
        model = model.to(device=target, dtype=DTYPES[dtype_name]).eval()
        for kind in kinds or list(ENCODER_INPUTS):
            tower, _ = ENCODER_INPUTS[kind]
            inputs = _encoder_batch(kind, batch, target)

            def run(
                tower: str = tower, inputs: torch.Tensor = inputs, model: ImageBindModel = model
            ) -> None:
                with torch.inference_mode():
                    model.encode(tower, inputs)
                _synchronize(target)

            run()  # warm-up: kernels, allocator, lazy init
            wall, _ = _best_times(run, repeats)
            rows.append(
                {
                    "section": f"encoder ({config_name}, {target.type})",
                    "workload": f"{kind} x{batch}",
                    "variant": dtype_name,
                    "wall s": wall,
                    "items/s": f"{batch / wall:.1f}",
                }
            )
        del model
    return rows


def _cell(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def print_table(rows: list[Row]) -> None:
    """Print rows as a table, with ``rich`` when it is installed."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(column, "")) for column in columns] for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
        for line in [columns, *cells]:
            print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        return
    table = Table(*columns, title="langchain-pandagpt ImageBind benchmarks")
    for line in cells:
        table.add_row(*line)
    Console(width=max(Console().width, 140)).print(table)  # pipes get 80 columns otherwise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing (best is kept)")
    parser.add_argument("--gop", type=int, default=60, help="keyframe interval of the test video")
    parser.add_argument("--config", choices=["small", "huge"], default="small")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--modalities", nargs="+", choices=list(ENCODER_INPUTS), default=None)
    parser.add_argument("--batch", type=int, default=8, help="items per encoder call")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--skip-video", action="store_true", help="skip the decoding section")
    args = parser.parse_args()
    rows = encoder_section(
        args.config, args.dtypes, args.modalities, args.batch, args.repeats, args.device
    )
    if not args.skip_video:
        rows += video_preprocessing_section(repeats=args.repeats, gop=args.gop)
    print_table(rows)


if __name__ == "__main__":
    main()
