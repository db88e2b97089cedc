"""Training throughput: cached ImageBind features vs running ImageBind in every step.

Run ``python benchmarks/train_bench.py`` from a checkout. It builds the tiny random bundle and
the synthetic multimodal dataset (images, audio, thermal, IMU) in a temp directory, encodes the
media once into a feature cache, then times the same training step (forward, backward, AdamW
on LoRA + projection) two ways, each in a fresh child process so its peak RSS is its own:

* ``cached``: media tokens projected from the feature cache (what ``python -m training train``
  does);
* ``imagebind in step``: every step loads and decodes the files and runs the frozen ImageBind
  (no embedding cache), as a trainer without ``precompute`` would.

Throughput is the fastest of several passes over the data (the one least disturbed by other
load); memory is each child's peak RSS. Both children load the whole bundle (``load_pandagpt``
always loads ImageBind), so the memory gap is the decoding and encoder activations only.

The ratio depends on how the encoder's cost compares with the LLM's: on the tiny bundle the LLM
is almost free, so this is the upper end. With ImageBind-Huge and a 7B LLM on a GPU the encoder
is a few percent of the step's FLOPs; there the cache mostly saves the decoding CPU time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `training` lives at the top of the checkout

Row = dict[str, object]


def _peak_rss_mib() -> float:
    """This process's peak RSS (Linux ``VmHWM``). Not ``getrusage``: its ``ru_maxrss`` survives
    ``exec``, so a spawned child would report its parent's peak whenever that is higher."""
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 1024


def _prepare(root: Path, records: int) -> None:
    from langchain_pandagpt.model.bundle import load_pandagpt
    from langchain_pandagpt.model.tiny import create_tiny_checkpoint
    from training.data import DataSource, read_dataset
    from training.features import FeatureCache, precompute, unique_media
    from training.synthetic import write_synthetic_dataset

    create_tiny_checkpoint(root / "bundle", seed=0)
    data = write_synthetic_dataset(root / "data", records=records)
    samples = read_dataset([DataSource(path=data)]).usable("fail")
    model = load_pandagpt(root / "bundle")
    precompute(model, unique_media(samples), FeatureCache(root / "features"), progress=False)


def _measure(
    root: Path, variant: str, rounds: int, micro_batch: int, threads: int
) -> tuple[float, float]:
    """Samples/s of the fastest of ``rounds`` passes over the dataset (the least disturbed by
    other load; one warm-up pass first) and the process's peak RSS in MiB."""
    import torch

    from langchain_pandagpt.generation.prompt import PromptLayout, PromptSettings, build_prompt
    from training.batches import FeatureDataset, attach_features, collate
    from training.config import load_config
    from training.data import read_dataset
    from training.features import FeatureCache
    from training.model import PandaGPTForTraining, load_for_training

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    config = load_config(
        REPO / "training" / "configs" / "tiny.yaml",
        [
            f"bundle={root / 'bundle'}",
            f"data=[{{path: {root / 'data' / 'train.jsonl'}}}]",
            f"feature_cache={root / 'features'}",
            f"output_dir={root / 'run'}",
        ],
    )
    model = load_for_training(config, torch.device("cpu"))
    model.media_cache_size = 0  # ImageBind really runs whenever it is asked
    module = PandaGPTForTraining(model)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    cache = FeatureCache(config.feature_cache)
    report = read_dataset(config.data)
    keys = attach_features(report, cache, progress=False)
    samples = report.usable("fail")
    settings = PromptSettings()
    if variant == "cached":
        dataset = FeatureDataset(
            samples,
            keys,
            cache,
            model.tokenizer,
            bos_token_id=model.bos_token_id,
            settings=settings,
            max_length=config.max_length,
        )

        def layout(index: int) -> PromptLayout:
            return dataset[index]
    else:

        def layout(index: int) -> PromptLayout:
            return build_prompt(
                samples[index].messages,
                model.tokenizer,
                bos_token_id=model.bos_token_id,
                settings=settings,
                add_generation_prompt=False,
            ).truncate(config.max_length)

    def step(number: int) -> None:
        first = number * micro_batch
        indices = [(first + i) % len(samples) for i in range(micro_batch)]
        batch = collate([layout(i) for i in indices], model.tokenizer.pad_token_id)
        loss, _, _ = module(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    steps = len(samples) // micro_batch
    for number in range(steps):
        step(number)
    fastest = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for number in range(steps):
            step(number)
        fastest = min(fastest, time.perf_counter() - start)
    return steps * micro_batch / fastest, _peak_rss_mib()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=32, help="synthetic records")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes over the data")
    parser.add_argument("--micro-batch", type=int, default=4, help="samples per step")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steadiest on a busy machine)"
    )
    args = parser.parse_args()

    from benchmarks.imagebind_bench import print_table

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        _prepare(root, args.records)
        context = multiprocessing.get_context("spawn")
        results = {}
        for variant in ("cached", "imagebind in step"):
            with context.Pool(1) as pool:
                measure_args = (root, variant, args.rounds, args.micro_batch, args.threads)
                results[variant] = pool.apply(_measure, measure_args)
    slowest = results["imagebind in step"][0]
    rows: list[Row] = [
        {"variant": variant, "samples/s": rate, "speed-up": rate / slowest, "peak RSS MiB": peak}
        for variant, (rate, peak) in results.items()
    ]
    print_table(rows)


if __name__ == "__main__":
    main()
