"""Training on the tiny bundle: data checks, feature cache, labels, loss, resume, export, DDP."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from langchain_core.messages import HumanMessage
from langchain_core.messages.content import create_image_block, create_text_block
from marks import child_processes
from PIL import Image
from safetensors.torch import load_file

from langchain_pandagpt.chat_models import ChatPandaGPT
from langchain_pandagpt.conversation import MediaItem, Message
from langchain_pandagpt.errors import CheckpointError
from langchain_pandagpt.generation.engine import GenerationEngine, SamplingParams
from langchain_pandagpt.generation.prompt import IGNORE_INDEX, TURN_END, build_prompt
from langchain_pandagpt.model.adapter import read_peft_adapter, read_reference_checkpoint
from langchain_pandagpt.model.bundle import load_pandagpt
from training.__main__ import main
from training.batches import attach_features, collate
from training.checkpoints import ADAPTER, list_checkpoints
from training.config import ConfigError, TrainConfig, load_config
from training.data import DataError, DataReport, DataSource, Sample, read_dataset
from training.export import REFERENCE_NAME, export_bundle
from training.features import FeatureCache, precompute, unique_media
from training.metrics import append_metrics, read_metrics, truncate_metrics
from training.model import PandaGPTForTraining, causal_lm_loss
from training.synthetic import main as synthetic_main
from training.synthetic import write_synthetic_dataset
from training.trainer import METRICS, Trainer, lr_factor

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "training" / "configs" / "tiny.yaml"


@pytest.fixture(autouse=True)
def _fresh_accelerate_state() -> Iterator[None]:
    """Each run builds its own Accelerator; accelerate keeps process-wide singletons."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def workspace(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic dataset with every media item encoded into a feature cache."""
    root = tmp_path_factory.mktemp("training")
    data = write_synthetic_dataset(root / "data", records=32)
    samples = read_dataset([DataSource(path=data)]).usable("fail")
    model = load_pandagpt(tiny_bundle)
    report = precompute(model, unique_media(samples), FeatureCache(root / "features"))
    assert report.encoded == report.items == 36 and not report.problems
    return root


def _paths(workspace: Path, tiny_bundle: Path, output_dir: Path) -> list[str]:
    """``--set`` overrides pointing tiny.yaml at the test's bundle, data and cache."""
    return [
        f"bundle={tiny_bundle}",
        f"data=[{{path: {workspace / 'data' / 'train.jsonl'}}}]",
        f"feature_cache={workspace / 'features'}",
        f"output_dir={output_dir}",
    ]


def config_for(workspace: Path, tiny_bundle: Path, run: str, *overrides: str) -> TrainConfig:
    return load_config(TINY_CONFIG, [*_paths(workspace, tiny_bundle, workspace / run), *overrides])


def losses(run_dir: Path) -> list[float]:
    lines = (run_dir / METRICS).read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def final_adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    adapter = list_checkpoints(run_dir)[-1] / ADAPTER
    return {
        **load_file(adapter / "adapter_model.safetensors"),
        **load_file(adapter / "projection.safetensors"),
    }


def run(config: TrainConfig, stop_after: int | None = None) -> Trainer:
    """A run (resumed from its latest checkpoint, if any) on this process, as ``train`` does."""
    trainer = Trainer(config)
    trainer.resume()
    trainer.run(stop_after)
    AcceleratorState._reset_state(reset_partial_state=True)
    return trainer


@pytest.fixture(scope="module")
def trained(workspace: Path, tiny_bundle: Path) -> Trainer:
    return run(config_for(workspace, tiny_bundle, "run"))


# -- data ------------------------------------------------------------------------------------


def _write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value))
    return path


def test_reads_the_reference_llava_and_jsonl_formats(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "cat.jpg")
    np.save(tmp_path / "walk.npy", np.zeros((6, 2000), np.float32))
    turns = [{"from": "human", "value": "What?"}, {"from": "gpt", "value": "A cat."}]
    reference = _write_json(tmp_path / "ref.json", [{"image_name": "cat", "conversation": turns}])
    llava_turns = [{"from": "human", "value": "<image>\nWhat?"}, turns[1]]
    llava = _write_json(
        tmp_path / "llava.json",
        [{"id": "x", "image": "cat.jpg", "conversations": llava_turns}],
    )
    jsonl = tmp_path / "ours.jsonl"
    record = {"media": [{"modality": "imu", "path": "walk.npy"}], "conversation": turns}
    jsonl.write_text(json.dumps(record) + "\n")

    report = read_dataset([DataSource(path=p) for p in (reference, llava, jsonl)])
    assert report.records == 3 and not report.problems
    first, second, third = report.samples
    assert first.media == [MediaItem("image", str(tmp_path / "cat.jpg"))]  # ".jpg" appended
    assert second.messages[0].text == "What?"  # <image> placeholder removed
    assert [m.role for m in second.messages] == ["human", "assistant"]
    assert third.media == [MediaItem("imu", str(tmp_path / "walk.npy"))]


def test_bad_records_are_listed_and_skipped_or_fatal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    good = [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]
    media = [{"modality": "image", "path": "ok.png"}]
    lines = [
        {"id": "good", "media": media, "conversation": good},
        {
            "id": "missing",
            "media": [{"modality": "image", "path": "gone.png"}],
            "conversation": good,
        },
        {"id": "empty", "media": media, "conversation": [good[0], {"from": "gpt", "value": " "}]},
        {"id": "role", "media": media, "conversation": [good[0], {"from": "bot", "value": "A"}]},
        {"id": "first", "media": media, "conversation": [good[1], good[0]]},
        {
            "id": "modality",
            "media": [{"modality": "smell", "path": "ok.png"}],
            "conversation": good,
        },
        {"id": "no-answer", "media": media, "conversation": [good[0]]},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n{not json\n")

    report = read_dataset([DataSource(path=path)])
    assert report.records == 8 and [s.record for s in report.samples] == ["data.jsonl:1 (id good)"]
    assert report.bad_records == 7
    text = report.summary()
    for expected in (
        "data.jsonl:2 (id missing): missing media",
        "data.jsonl:3 (id empty): turn 1: empty text",
        "data.jsonl:4 (id role): turn 1: role must be 'human' or 'gpt', got 'bot'",
        "data.jsonl:5 (id first): first turn is 'gpt', must be 'human'",
        "data.jsonl:6 (id modality): media 0: modality must be one of",
        "data.jsonl:7 (id no-answer): no 'gpt' answer to learn from",
        "data.jsonl:8: not valid JSON",
    ):
        assert expected in text
    assert len(report.usable("skip")) == 1
    with pytest.raises(DataError, match="id missing"):
        report.usable("fail")

    config = tmp_path / "config.yaml"
    config.write_text(f"bundle: b\ndata: [{{path: {path}}}]\nfeature_cache: f\noutput_dir: o\n")
    assert main(["validate", "--config", str(config)]) == 1
    assert main(["validate", "--config", str(config), "--on-error", "skip"]) == 0
    out = capsys.readouterr().out
    assert "8 records, 1 usable, 7 bad" in out and "id first" in out


def test_config_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="learning_rat"):
        load_config(TINY_CONFIG, ["learning_rat=1"])
    with pytest.raises(ConfigError, match="multiple of micro_batch_size"):
        load_config(TINY_CONFIG, ["global_batch_size=5"])
    config = load_config(TINY_CONFIG, ["lora.r=4", "mixed_precision=no"])
    assert config.lora.r == 4 and config.mixed_precision == "no"
    assert config.accumulation_steps(2) == 1
    with pytest.raises(ConfigError, match="processes"):
        config.accumulation_steps(4)
    reference = load_config(REPO / "training" / "configs" / "pandagpt_7b.yaml")
    assert (reference.learning_rate, reference.betas, reference.weight_decay) == (
        5e-4,
        (0.9, 0.95),
        0.001,
    )
    assert reference.accumulation_steps(8) == 4 and reference.max_length == 1024
    # DeepSpeed WarmupDecayLR with log warmup over max(10, 10 %) of the steps.
    assert reference.warmup_steps(50) == 10 and reference.warmup_steps(5000) == 500
    assert lr_factor(0, 10, 100, "log") == 0.0
    assert lr_factor(9, 10, 100, "log") == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, "log") == pytest.approx(0.5)


# -- feature cache ---------------------------------------------------------------------------


def test_precompute_is_sharded_resumable_and_reports_bad_media(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    model = load_pandagpt(tiny_bundle)
    paths = []
    for index in range(5):
        Image.new("RGB", (16, 16), (40 * index, 0, 0)).save(tmp_path / f"{index}.png")
        paths.append(tmp_path / f"{index}.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    items = [MediaItem("image", str(p)) for p in [*paths, tmp_path / "broken.png"]]
    cache_dir = tmp_path / "cache"
    (cache_dir).mkdir()
    (cache_dir / "features-crashed.safetensors.tmp").write_bytes(b"half a shard")

    ranks = [
        precompute(
            model, items, FeatureCache(cache_dir), rank=r, world_size=2, batch_size=1, shard_size=2
        )
        for r in (0, 1)
    ]
    assert [r.items for r in ranks] == [3, 3] and sum(r.encoded for r in ranks) == 5
    problems = [p for r in ranks for p in r.problems]
    assert len(problems) == 1 and problems[0].record.endswith("broken.png")
    assert len(list(cache_dir.glob("features-*.safetensors"))) == 3  # rank 0: 2 + 1, rank 1: 2

    cache = FeatureCache(cache_dir)
    assert len(cache) == 5
    again = precompute(model, items, cache)
    assert (again.encoded, again.cached) == (0, 5)
    item = items[2]
    expected = model.embed_media([item])[0]
    assert torch.allclose(cache.get(item.content_hash()), expected)

    Image.new("RGB", (16, 16), (0, 0, 255)).save(tmp_path / "new.png")
    turns = (Message("human", "Q?"), Message("assistant", "A."))
    report = DataReport(
        records=2,
        samples=[
            Sample("cached", (replace(turns[0], media=[item]), turns[1])),
            Sample(
                "new",
                (
                    replace(turns[0], media=[MediaItem("image", str(tmp_path / "new.png"))]),
                    turns[1],
                ),
            ),
        ],
    )
    assert attach_features(report, cache, progress=False) == [[item.content_hash()]]
    assert [s.record for s in report.samples] == ["cached"]
    assert "new.png (run precompute)" in report.summary()


# -- labels and gradients --------------------------------------------------------------------


def test_labels_cover_answers_only_and_masked_positions_get_no_gradient(
    trained: Trainer,
) -> None:
    dataset = trained.dataset
    tokenizer = trained.module.model.tokenizer
    batch = collate([dataset[0], dataset[1]], trained.pad_id)
    for row in range(2):
        sample = dataset.samples[row]
        labels = batch.labels[row]
        answer = tokenizer.encode(sample.messages[1].text + TURN_END, add_special_tokens=False)
        assert labels[labels != IGNORE_INDEX].tolist() == answer
        assert batch.attention_mask[row].sum() == dataset[row].num_positions

    module: PandaGPTForTraining = trained.module
    module.eval()
    embeds = module.embed(batch)
    logits = module.llm(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits
    logits.retain_grad()
    loss, count, _ = causal_lm_loss(logits, batch.labels)
    loss.backward()
    assert logits.grad is not None
    has_target = torch.zeros_like(batch.labels, dtype=torch.bool)
    has_target[:, :-1] = batch.labels[:, 1:] != IGNORE_INDEX
    row_norms = logits.grad.abs().sum(-1)
    assert count == int(has_target.sum())
    assert torch.all(row_norms[~has_target] == 0)
    assert torch.all(row_norms[has_target] > 0)
    module.zero_grad()


# -- training --------------------------------------------------------------------------------


def test_training_halves_the_loss(trained: Trainer) -> None:
    curve = losses(trained.output_dir)
    assert len(curve) == 40
    first, last = np.mean(curve[:3]), np.mean(curve[-3:])
    assert last <= 0.5 * first, curve
    assert [p.name for p in list_checkpoints(trained.output_dir)] == [
        "step-00000030",
        "step-00000040",
    ]
    assert list((trained.output_dir / "pandagpt").rglob("events.out.tfevents.*"))


def test_an_interrupted_run_resumes_to_the_same_weights(workspace: Path, tiny_bundle: Path) -> None:
    common = ("max_steps=10", "checkpoint_every=4", "report_to=[]")
    run(config_for(workspace, tiny_bundle, "whole", *common))
    assert run(config_for(workspace, tiny_bundle, "halves", *common), stop_after=6).step == 6
    run_dir = workspace / "halves"
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-00000004", "step-00000006"]
    (run_dir / "checkpoints" / "step-00000008.tmp").mkdir()  # a save cut off by a crash
    with (run_dir / METRICS).open("a") as handle:
        handle.write('{"step": 7, "loss": 4.')  # a log line cut off by the same crash

    second = Trainer(config_for(workspace, tiny_bundle, "halves", *common))
    second.resume()
    assert second.step == 6 and not (run_dir / "checkpoints" / "step-00000008.tmp").exists()
    second.run()
    assert losses(run_dir) == losses(workspace / "whole")
    resumed, uninterrupted = final_adapter(run_dir), final_adapter(workspace / "whole")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[key], uninterrupted[key]) for key in resumed)


@child_processes
def test_a_killed_run_resumes_to_the_same_weights(
    trained: Trainer, workspace: Path, tiny_bundle: Path
) -> None:
    """SIGKILL at an arbitrary point (maybe mid-checkpoint), then resume: as if uninterrupted."""
    run_dir = workspace / "killed"
    command = [sys.executable, "-m", "training", "train", "--config", str(TINY_CONFIG)]
    command += [f"--set={override}" for override in _paths(workspace, tiny_bundle, run_dir)]
    logged, log = run_dir / METRICS, workspace / "killed.log"
    with log.open("wb") as output, subprocess.Popen(command, cwd=REPO, stderr=output) as job:
        while job.poll() is None and (not logged.exists() or logged.read_text().count("\n") < 15):
            time.sleep(0.01)
        job.kill()
    assert job.returncode == -signal.SIGKILL, log.read_text()[-2000:]

    resumed = run(config_for(workspace, tiny_bundle, "killed"))
    assert resumed.resumed_from is not None
    assert losses(run_dir) == losses(trained.output_dir)
    ours, uninterrupted = final_adapter(run_dir), final_adapter(trained.output_dir)
    assert all(torch.equal(ours[key], uninterrupted[key]) for key in uninterrupted)


def test_export_gives_a_bundle_with_the_trained_models_outputs(
    trained: Trainer, workspace: Path, tiny_bundle: Path
) -> None:
    output = workspace / "exported"
    sets = [f"--set={o}" for o in _paths(workspace, tiny_bundle, trained.output_dir)]
    command = ["export", "--config", str(TINY_CONFIG), *sets, "--output", str(output)]
    assert main([*command, "--reference"]) == 0

    model = trained.module.model
    trained.module.eval()
    sample = trained.dataset.samples[0]
    first, *rest = sample.messages
    media = [MediaItem(item.modality, item.data) for item in sample.media]  # files, not features
    assert [item.modality for item in media] == ["image"]
    from_files = build_prompt(
        [Message(first.role, first.text, media), *rest],
        model.tokenizer,
        bos_token_id=model.bos_token_id,
        settings=trained.dataset.settings,
        add_generation_prompt=False,
    )
    exported = load_pandagpt(output)
    with torch.no_grad():
        batch = collate([trained.dataset[0]], trained.pad_id)
        ours = trained.module.llm(inputs_embeds=trained.module.embed(batch)).logits
        batch = collate([from_files], trained.pad_id)
        theirs = exported.llm(inputs_embeds=PandaGPTForTraining(exported).embed(batch)).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)

    question = Message("human", first.text, media)
    with GenerationEngine(model) as engine:
        expected = engine.generate([question], SamplingParams(max_new_tokens=12)).text
    chat = ChatPandaGPT(model=str(output), device="cpu", max_tokens=12)
    image = create_image_block(url=Path(str(media[0].data)).as_uri())
    question_message = HumanMessage(content_blocks=[image, create_text_block(first.text)])
    assert chat.invoke([question_message]).content == expected
    chat.engine.close()

    portable = export_bundle(trained.config, workspace / "portable", copy_base=True, name="mine")
    manifest = json.loads((portable / "pandagpt.json").read_text())
    assert (manifest["name"], manifest["llm"], manifest["imagebind"]) == (
        "mine",
        "llm",
        "imagebind.safetensors",
    )
    torch.testing.assert_close(
        load_pandagpt(portable).projection.weight, exported.projection.weight
    )

    reference = read_reference_checkpoint(output / REFERENCE_NAME)
    peft = read_peft_adapter(output / ADAPTER, output / "projection.safetensors")
    assert reference.lora.keys() == peft.lora.keys()
    scale = peft.config.lora_alpha / peft.config.r  # the reference layout assumes alpha == r
    for key, value in peft.lora.items():
        folded = value * scale if ".lora_B." in key else value
        torch.testing.assert_close(reference.lora[key], folded.half())
    torch.testing.assert_close(reference.projection_weight, peft.projection_weight.half())


def _launch_two_processes(*args: str) -> None:
    """``accelerate launch`` with 2 CPU processes (gloo). accelerate's ``--cpu`` launcher starts
    a single process unless MPI is set up, so this uses the torchrun launcher with
    ``ACCELERATE_USE_CPU``, which is what makes each process pick gloo and the CPU."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port", "0",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "training", *args,
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@child_processes
def test_two_processes_through_accelerate_launch_match_one(
    workspace: Path, tiny_bundle: Path
) -> None:
    overrides = ("max_steps=6", "report_to=[]", "lora.dropout=0.0")  # dropout draws per rank
    single = run(config_for(workspace, tiny_bundle, "single", *overrides))
    paths = _paths(workspace, tiny_bundle, workspace / "ddp")
    own_cache = f"feature_cache={workspace / 'ddp_features'}"
    sets = [f"--set={override}" for override in (*paths, own_cache, *overrides)]
    config = ("--config", str(TINY_CONFIG))
    _launch_two_processes("precompute", *config, *sets, "--shard-size=8")
    _launch_two_processes("train", *config, *sets)

    shared, features = (
        FeatureCache(workspace / "features"),
        FeatureCache(workspace / "ddp_features"),
    )
    assert len(features) == 36 and len(list(features.root.glob("*.safetensors"))) >= 4
    item = unique_media(single.dataset.samples)[-1]
    key = item.content_hash()
    torch.testing.assert_close(features.get(key), shared.get(key))  # other batches, same values
    checkpoint = list_checkpoints(workspace / "ddp")[-1]
    assert {p.name for p in checkpoint.glob("random_states_*.pkl")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }
    np.testing.assert_allclose(losses(workspace / "ddp"), losses(workspace / "single"), rtol=1e-5)
    ddp, one = final_adapter(workspace / "ddp"), final_adapter(workspace / "single")
    for key in one:
        torch.testing.assert_close(ddp[key], one[key], rtol=1e-4, atol=1e-5)


def test_gradient_checkpointing_changes_nothing_and_qlora_trains(
    workspace: Path, tiny_bundle: Path
) -> None:
    short = ("max_steps=2", "global_batch_size=2", "report_to=[]")
    curves = []
    for name, checkpointing in (("plain", "false"), ("recompute", "true")):
        option = f"gradient_checkpointing={checkpointing}"
        run(config_for(workspace, tiny_bundle, name, *short, option))
        curves.append(losses(workspace / name))
    assert curves[0] == curves[1]

    qlora = Trainer(config_for(workspace, tiny_bundle, "qlora", *short, "precision=nf4"))
    base_layer = qlora.module.llm.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(base_layer).__name__ == "Linear4bit"
    assert all(p.dtype == torch.float32 for p in qlora.trainable)
    before = qlora.module.projection.weight.detach().clone()
    qlora.run()
    assert np.isfinite(losses(workspace / "qlora")).all()
    assert not torch.equal(qlora.module.projection.weight, before)


def test_init_from_bundle_continues_the_bundles_adapter(workspace: Path, tiny_bundle: Path) -> None:
    trainer = Trainer(config_for(workspace, tiny_bundle, "continue", "init_from_bundle=true"))
    bundle = load_pandagpt(tiny_bundle)
    module = trainer.module
    torch.testing.assert_close(module.projection.weight, bundle.projection.weight)
    assert (
        module.projection.weight.dtype == torch.float32 and module.projection.weight.requires_grad
    )
    ours = dict(module.llm.named_parameters())
    for name, value in bundle.llm.named_parameters():
        if ".lora_" in name:
            torch.testing.assert_close(ours[name], value)
            assert ours[name].requires_grad
        else:
            assert not ours[name].requires_grad


# -- storage faults: disk full, read-only output, torn metrics, interrupted export -----------


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    return errors[0]


@pytest.mark.slow
def test_disk_full_while_checkpointing_is_one_line_naming_the_path(
    workspace: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    run_dir = workspace / "full"
    sets = [f"--set={o}" for o in (*_paths(workspace, tiny_bundle, run_dir), "report_to=[]")]
    command = ["train", "--config", str(TINY_CONFIG), *sets, "--set=max_steps=2"]

    def short_write(*args: object, **kwargs: object) -> None:  # what torch says on ENOSPC
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . unexpected pos 76224 vs 76116"
        )

    monkeypatch.setattr(torch, "save", short_write)
    assert main(command) == 1
    line = _one_line_error(capsys)
    assert f"{run_dir / 'checkpoints' / 'step-00000002.tmp'}: no space left" in line
    assert "--set output_dir=DIR" in line and "unexpected pos" not in line
    assert not list((run_dir / "checkpoints").iterdir())  # the partial checkpoint is gone
    monkeypatch.undo()
    AcceleratorState._reset_state(reset_partial_state=True)

    def quota(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("training.checkpoints.write_peft_adapter", quota)
    assert main(command) == 1
    assert "step-00000002.tmp: no space left on the device" in _one_line_error(capsys)


def test_read_only_output_is_one_line_naming_the_path(
    trained: Trainer, workspace: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Tests run as root, where chmod does not bite: the file system's refusal is simulated."""
    locked = workspace / "locked"
    original = Path.mkdir

    def refuse(self: Path, *args: Any, **kwargs: Any) -> None:
        if self.is_relative_to(locked):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    sets = [f"--set={o}" for o in _paths(workspace, tiny_bundle, locked / "run")]
    assert main(["train", "--config", str(TINY_CONFIG), *sets, "--set=max_steps=2"]) == 1
    line = _one_line_error(capsys)
    assert line.startswith(f"error: {locked / 'run'}") and "read-only file system" in line
    AcceleratorState._reset_state(reset_partial_state=True)

    def denied(self: Path, *args: Any, **kwargs: Any) -> None:
        if str(self).startswith(str(locked)):  # the bundle is written beside it first
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", denied)
    sets = [f"--set={o}" for o in _paths(workspace, tiny_bundle, trained.output_dir)]
    assert main(["export", "--config", str(TINY_CONFIG), *sets, "--output", str(locked)]) == 1
    line = _one_line_error(capsys)
    assert f"{locked}.tmp: permission denied; make" in line and "--output DIR" in line


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
    return done.returncode == 0


def test_a_really_full_disk_stops_training_with_one_line(
    workspace: Path, tiny_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real thing, where the test may mount a small tmpfs (root with CAP_SYS_ADMIN)."""
    disk = workspace / "small-disk"
    if sys.platform != "linux" or not _mount_tmpfs(disk, "160k"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        sets = [f"--set={o}" for o in (*_paths(workspace, tiny_bundle, disk), "report_to=[]")]
        command = ["train", "--config", str(TINY_CONFIG), *sets, "--set=checkpoint_every=1"]
        assert main([*command, "--set=max_steps=3"]) == 1
        line = _one_line_error(capsys)
        assert "no space left on the device" in line and str(disk / "checkpoints") in line
        assert not list((disk / "checkpoints").glob("*.tmp"))
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_torn_metrics_lines_are_skipped_and_never_glued_to(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / METRICS
    append_metrics(path, {"step": 1, "loss": 2.0})
    with path.open("a") as handle:
        handle.write('{"step": 2, "loss": 1.')  # the process died mid-write
    with caplog.at_level("WARNING", logger="training.metrics"):
        assert read_metrics(path) == [{"step": 1, "loss": 2.0}]
    assert f"{path}:2: skipped a torn" in caplog.text
    append_metrics(path, {"step": 2, "loss": 1.5})  # a new line, not glued to the fragment
    assert read_metrics(path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    truncate_metrics(path, 1)
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n'


def _projection(bundle: Path) -> torch.Tensor:
    return load_file(bundle / "projection.safetensors")["weight"]


def test_export_replaces_a_bundle_atomically(
    trained: Trainer, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = list_checkpoints(trained.output_dir)
    output = workspace / "swapped"
    export_bundle(trained.config, output, checkpoint=first)
    old = _projection(output)

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # killed while writing the new bundle

    with monkeypatch.context() as patch:
        patch.setattr("training.export.write_reference_checkpoint", crash)
        with pytest.raises(KeyboardInterrupt):
            export_bundle(trained.config, output, checkpoint=second, reference=True)
    assert torch.equal(_projection(output), old) and load_pandagpt(output).projection is not None
    assert sorted(p.name for p in workspace.glob("swapped*")) == ["swapped"]

    with monkeypatch.context() as patch:  # killed after the swap, before the old one is deleted
        patch.setattr("training.atomic.shutil.rmtree", crash)
        with pytest.raises(KeyboardInterrupt):
            export_bundle(trained.config, output, checkpoint=second)
    assert not torch.equal(_projection(output), old)
    assert load_pandagpt(output).manifest.name.endswith(second.name)
    export_bundle(trained.config, output, checkpoint=first)  # the leftover old tree is cleared
    assert torch.equal(_projection(output), old)
    assert sorted(p.name for p in workspace.glob("swapped*")) == ["swapped"]

    # Without renameat2 the old bundle steps aside first; a crash right then is undone.
    monkeypatch.setattr("training.atomic._exchange", lambda a, b: False)
    os.replace(output, workspace / "swapped.old")  # the state such a crash leaves
    export_bundle(trained.config, output, checkpoint=second)
    assert not torch.equal(_projection(output), old)
    assert sorted(p.name for p in workspace.glob("swapped*")) == ["swapped"]


def test_export_refuses_to_replace_what_is_not_an_exported_bundle(
    trained: Trainer, workspace: Path, tiny_bundle: Path
) -> None:
    precious = workspace / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(CheckpointError, match="not a bundle"):
        export_bundle(trained.config, precious)
    with pytest.raises(CheckpointError, match="is the base bundle"):
        export_bundle(trained.config, tiny_bundle)
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_the_tiny_config_runs_as_written_after_its_setup_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's commands, from a checkout's root (here a stand-in working directory)."""
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "--config", str(TINY_CONFIG)]) == 1
    line = _one_line_error(capsys)
    assert "no such data training/examples/tiny/data/train.jsonl" in line
    assert f"working directory, {tmp_path}" in line and "`python -m training.synthetic`" in line
    assert main(["train", "--config", str(TINY_CONFIG)]) == 1
    assert "no such bundle training/examples/tiny/bundle, data" in _one_line_error(capsys)

    assert synthetic_main([]) == 0
    assert main(["validate", "--config", str(TINY_CONFIG)]) == 0
    assert "32 records, 32 usable, 0 bad" in capsys.readouterr().out
    assert load_config(TINY_CONFIG).bundle == Path("training/examples/tiny/bundle")
    assert (tmp_path / "training/examples/tiny/bundle/pandagpt.json").is_file()
