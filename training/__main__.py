"""``python -m training {validate,precompute,train,export} --config CONFIG.yaml``.

Every subcommand reads the same config (``training/configs/``), with ``--set key=value``
overrides. ``precompute`` and ``train`` run on all processes under ``accelerate launch``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from langchain_pandagpt.errors import PandaGPTError
from training.atomic import storage_problem
from training.config import ConfigError, TrainConfig, load_config
from training.data import problem_lines, read_dataset


def _check_inputs(config: TrainConfig, command: str) -> None:
    """Missing inputs in one line, before any heavy import: where relative paths start, and
    the config's ``setup`` command, if it has one."""
    inputs = [("data", source.path) for source in config.data]
    if command != "validate":
        inputs.insert(0, ("bundle", config.bundle))
    missing = [(key, path) for key, path in inputs if not path.exists()]
    if not missing:
        return
    names = ", ".join(f"{key} {path}" for key, path in missing)
    hint = f"create them with `{config.setup}`" if config.setup else "fix the paths in the config"
    relative = any(not path.is_absolute() for _, path in missing)
    where = f" (relative paths start at the working directory, {Path.cwd()})" if relative else ""
    raise ConfigError(f"no such {names}{where}; {hint}, or pass others with --set KEY=PATH")


def _validate(config: TrainConfig, args: argparse.Namespace) -> int:
    report = read_dataset(config.data)
    print(report.summary(limit=None))
    return 1 if report.problems and config.on_error == "fail" else 0


def _precompute(config: TrainConfig, args: argparse.Namespace) -> int:
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    from langchain_pandagpt.model.bundle import load_pandagpt
    from training.atomic import remove_stale, writing
    from training.features import CACHE_FIX, FeatureCache, precompute, unique_media

    accelerator = Accelerator()  # one process per device under accelerate launch
    report = read_dataset(config.data)
    if accelerator.is_main_process:
        print(report.summary())
    samples = report.usable(config.on_error)
    if accelerator.is_main_process:
        with writing(config.feature_cache, *CACHE_FIX):
            config.feature_cache.mkdir(parents=True, exist_ok=True)
            remove_stale(config.feature_cache)
    accelerator.wait_for_everyone()
    model = load_pandagpt(config.bundle, precision=config.precision, device=accelerator.device)
    cache = FeatureCache(config.feature_cache)
    result = precompute(
        model,
        unique_media(samples),
        cache,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        progress=accelerator.is_main_process,
    )
    counts = gather_object([(result.items, result.cached, result.encoded)])
    problems = gather_object(result.problems)
    if not accelerator.is_main_process:
        return 0
    items, cached, encoded = (sum(column) for column in zip(*counts, strict=True))
    print(
        f"{items} media items: {encoded} encoded, {cached} skipped (cached), {len(problems)} failed"
    )
    if problems:
        print("\n".join(problem_lines(problems, limit=None)))
    return 1 if problems and config.on_error == "fail" else 0


def _train(config: TrainConfig, args: argparse.Namespace) -> int:
    from training.trainer import train

    result = train(config, resume=args.resume, stop_after=args.stop_after)
    print(f"step {result.step}/{result.total_steps}, checkpoint {result.checkpoint}")
    return 0


def _export(config: TrainConfig, args: argparse.Namespace) -> int:
    from training.export import export_bundle

    path = export_bundle(
        config,
        args.output,
        checkpoint=args.checkpoint,
        reference=args.reference,
        copy_base=args.copy_base,
        name=args.name,
    )
    print(f"wrote bundle {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="PandaGPT training: LoRA + projection on cached ImageBind features.",
        epilog="Typical run: validate, precompute, train, export, all with --config "
        "training/configs/<recipe>.yaml; precompute and train also under accelerate launch.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", required=True, help="training config YAML")
    common.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (dotted keys, YAML values); repeatable",
    )
    on_error = argparse.ArgumentParser(add_help=False)
    on_error.add_argument(
        "--on-error",
        choices=("skip", "fail"),
        help="bad records: skip them (counted and listed) or stop (default: the config's)",
    )

    commands.add_parser(
        "validate", parents=[common, on_error], help="check the dataset, list bad records"
    ).set_defaults(run=_validate)

    pre = commands.add_parser(
        "precompute", parents=[common, on_error], help="encode all media into the feature cache"
    )
    pre.add_argument("--batch-size", type=int, default=16, help="media items per encoder call")
    pre.add_argument("--shard-size", type=int, default=4096, help="features per cache shard")
    pre.set_defaults(run=_precompute)

    run = commands.add_parser("train", parents=[common, on_error], help="train LoRA + projection")
    run.add_argument(
        "--resume",
        default="auto",
        help="auto (latest checkpoint of output_dir, if any), never, or a checkpoint path",
    )
    run.add_argument(
        "--stop-after", type=int, metavar="STEP", help="checkpoint and stop after this step"
    )
    run.set_defaults(run=_train)

    export = commands.add_parser("export", parents=[common], help="write a checkpoint as a bundle")
    export.add_argument("--output", required=True, help="new bundle directory")
    export.add_argument("--checkpoint", help="checkpoint directory (default: the latest)")
    export.add_argument(
        "--reference", action="store_true", help="also write the reference pytorch_model.pt"
    )
    export.add_argument(
        "--copy-base", action="store_true", help="copy the LLM and ImageBind instead of linking"
    )
    export.add_argument("--name", help="bundle name (default: base name + checkpoint)")
    export.set_defaults(run=_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        overrides = list(args.set)
        if getattr(args, "on_error", None):
            overrides.append(f"on_error={args.on_error}")
        config = load_config(args.config, overrides)
        _check_inputs(config, args.command)
        return int(args.run(config, args))
    except PandaGPTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a write no call site wrapped (trackers, accelerate's own files)
        problem = storage_problem(exc, Path.cwd(), "the output")
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
