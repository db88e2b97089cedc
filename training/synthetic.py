"""A small synthetic multimodal dataset for tests, the tiny end-to-end demo and benchmarks.

Each record has one generated file (image, audio, thermal image or IMU window; every eighth
record an image plus a sound, the reference's fused case) and a question whose answer names
the file's class (a colour, a pitch, warm/cold, a motion). The answers come from a handful of
sentences, so even the tiny random model can learn them within a few dozen steps.

``python -m training.synthetic`` writes it, with a tiny bundle, where
``training/configs/tiny.yaml`` looks (``training/examples/tiny``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

from langchain_pandagpt.imagebind.imu import IMU_CHANNELS, IMU_SAMPLES

SAMPLE_RATE = 16_000
_COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220)}
_PITCHES = {"low": 220.0, "high": 1760.0}
_MOTIONS = {"walking": 2.0, "running": 6.0}


def _image(path: Path, colour: str, rng: np.random.Generator) -> None:
    pixels = np.array(_COLOURS[colour], dtype=np.float32) + rng.normal(0, 12, (24, 24, 3))
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)


def _audio(path: Path, pitch: str, rng: np.random.Generator) -> None:
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    wave = 0.5 * np.sin(2 * np.pi * _PITCHES[pitch] * t) + rng.normal(0, 0.01, t.shape)
    soundfile.write(path, wave.astype(np.float32), SAMPLE_RATE)


def _thermal(path: Path, warm: bool, rng: np.random.Generator) -> None:
    pixels = (200.0 if warm else 40.0) + rng.normal(0, 10, (24, 24))
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8), mode="L").save(path)


def _imu(path: Path, motion: str, rng: np.random.Generator) -> None:
    t = np.arange(IMU_SAMPLES) / 400.0
    signal = np.sin(2 * np.pi * _MOTIONS[motion] * t)[None, :] * np.ones((IMU_CHANNELS, 1))
    np.save(path, (signal + rng.normal(0, 0.05, signal.shape)).astype(np.float32))


def _turns(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def write_synthetic_dataset(root: str | Path, records: int = 32, seed: int = 0) -> Path:
    """Writes ``records`` records and their media under ``root``; returns the JSONL path."""
    folder = Path(root)
    (folder / "media").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for index in range(records):
        stem = folder / "media" / f"{index:04d}"
        variant = index // 4  # varies the class among records of one kind
        colour = list(_COLOURS)[variant % len(_COLOURS)]
        pitch = list(_PITCHES)[variant % len(_PITCHES)]
        kind = "image+audio" if index % 8 == 7 else ("image", "audio", "thermal", "imu")[index % 4]
        media = []
        if kind.startswith("image"):
            _image(stem.with_suffix(".png"), colour, rng)
            media.append({"modality": "image", "path": f"media/{index:04d}.png"})
        if kind.endswith("audio"):
            _audio(stem.with_suffix(".wav"), pitch, rng)
            media.append({"modality": "audio", "path": f"media/{index:04d}.wav"})
        if kind == "image":
            turns = _turns("What colour is this picture?", f"The picture is {colour}.")
        elif kind == "audio":
            turns = _turns("What do you hear?", f"A {pitch} tone.")
        elif kind == "image+audio":
            turns = _turns(
                "Describe what you see and hear.", f"A {colour} picture and a {pitch} tone."
            )
        elif kind == "thermal":
            warm = variant % 2 == 0
            _thermal(stem.with_suffix(".png"), warm, rng)
            media.append({"modality": "thermal", "path": f"media/{index:04d}.png"})
            turns = _turns("Is it warm or cold?", "It is warm." if warm else "It is cold.")
        else:
            motion = list(_MOTIONS)[variant // 2 % len(_MOTIONS)]
            _imu(stem.with_suffix(".npy"), motion, rng)
            media.append({"modality": "imu", "path": f"media/{index:04d}.npy"})
            turns = _turns("What is the person doing?", f"The person is {motion}.")
        lines.append(
            json.dumps({"id": f"synthetic-{index}", "media": media, "conversation": turns})
        )
    path = folder / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


#: Where ``training/configs/tiny.yaml`` expects the example (relative to the repository root).
TINY_EXAMPLE = Path("training/examples/tiny")


def write_tiny_example(root: str | Path = TINY_EXAMPLE, records: int = 32) -> Path:
    """The files ``training/configs/tiny.yaml`` names: a random tiny bundle in ``root/bundle``
    (kept if there already) and the synthetic dataset in ``root/data``."""
    from langchain_pandagpt.model.tiny import create_tiny_checkpoint

    folder = Path(root)
    if not (folder / "bundle" / "pandagpt.json").is_file():
        create_tiny_checkpoint(folder / "bundle", seed=0)
    write_synthetic_dataset(folder / "data", records=records)
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.synthetic",
        description="Write the tiny example that training/configs/tiny.yaml trains on: a random "
        "tiny bundle and a synthetic multimodal dataset.",
    )
    parser.add_argument(
        "folder", nargs="?", type=Path, default=TINY_EXAMPLE, help=f"default: {TINY_EXAMPLE}"
    )
    parser.add_argument("--records", type=int, default=32, help="dataset size (default: 32)")
    args = parser.parse_args(argv)
    folder = write_tiny_example(args.folder, args.records)
    print(f"wrote {folder}/bundle and {folder}/data/train.jsonl ({args.records} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
