"""From samples to padded training batches whose media are cached ImageBind features.

Every sample becomes the same :class:`PromptLayout` inference uses (``prompt.py``), truncated
by the reference ``max_tgt_len`` rule, and its labels come from :meth:`PromptLayout.labels`:
loss only on the answers and their trailing ``"\\n###"``. Batches are right-padded like the
reference (pad positions masked out and unlabelled).

Data order is a pure function of ``(seed, epoch, step)``, so a resumed run, or a run on another
number of processes, feeds exactly the same samples into every optimizer step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from langchain_pandagpt.conversation import MediaItem
from langchain_pandagpt.generation.prompt import (
    IGNORE_INDEX,
    PromptLayout,
    PromptSettings,
    TextSegment,
    Tokenizer,
    build_prompt,
)
from training.data import DataReport, Problem, Sample
from training.features import FeatureCache


@dataclass
class Batch:
    """Right-padded ``(rows, length)`` tensors plus the media features and where they go.

    ``media_index[i]`` is the flattened position ``row * length + column`` that media item ``i``
    is added into (items of one fused slot share a position: the reference's sum).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    media: list[MediaItem]
    media_index: torch.Tensor


def collate(layouts: Sequence[PromptLayout], pad_token_id: int) -> Batch:
    """Pads layouts into one batch; media positions hold ``pad_token_id`` until embedded."""
    rows, length = len(layouts), max(layout.num_positions for layout in layouts)
    input_ids = torch.full((rows, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((rows, length), dtype=torch.long)
    labels = torch.full((rows, length), IGNORE_INDEX, dtype=torch.long)
    media: list[MediaItem] = []
    media_index: list[int] = []
    for row, layout in enumerate(layouts):
        input_ids[row, 0] = layout.bos_token_id
        for start, segment in layout.spans():
            if isinstance(segment, TextSegment):
                input_ids[row, start : start + len(segment.ids)] = torch.tensor(segment.ids)
                continue
            for offset, item in enumerate(segment.items):
                media.append(item)
                media_index.append(row * length + start + (0 if segment.fused else offset))
        attention_mask[row, : layout.num_positions] = 1
        labels[row, : layout.num_positions] = torch.tensor(layout.labels())
    return Batch(input_ids, attention_mask, labels, media, torch.tensor(media_index))


def attach_features(
    report: DataReport, cache: FeatureCache, progress: bool = True
) -> list[list[str]]:
    """The content hashes of every usable sample's media, checked against the cache.

    A sample whose media cannot be read, or whose features are not cached (``precompute`` was
    not run on it), moves from ``report.samples`` to ``report.problems``. Returns the keys of
    the samples that remain, in order.
    """
    usable: list[Sample] = []
    keys: list[list[str]] = []
    for sample in tqdm(report.samples, desc="hashing media", unit="sample", disable=not progress):
        try:
            sample_keys = [item.content_hash() for item in sample.media]
        except OSError as exc:
            report.problems.append(Problem(sample.record, f"media cannot be read: {exc}"))
            continue
        pairs = zip(sample.media, sample_keys, strict=True)
        missing = [item.describe() for item, key in pairs if key not in cache]
        if missing:
            reason = f"no cached feature for {', '.join(missing)} (run precompute)"
            report.problems.append(Problem(sample.record, reason))
            continue
        usable.append(sample)
        keys.append(sample_keys)
    report.samples = usable
    return keys


class FeatureDataset(Dataset[PromptLayout]):
    """Samples as truncated prompt layouts whose media items are cached embeddings."""

    def __init__(
        self,
        samples: Sequence[Sample],
        keys: Sequence[Sequence[str]],
        cache: FeatureCache,
        tokenizer: Tokenizer,
        *,
        bos_token_id: int,
        settings: PromptSettings,
        max_length: int,
    ) -> None:
        self.samples = samples
        self.keys = keys
        self.cache = cache
        self.tokenizer = tokenizer
        self.bos_token_id = bos_token_id
        self.settings = settings
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> PromptLayout:
        keys = iter(self.keys[index])
        messages = [
            replace(
                message,
                media=[
                    MediaItem(
                        item.modality,
                        self.cache.get(next(keys)),
                        is_embedding=True,
                        name=item.describe(),
                    )
                    for item in message.media
                ],
            )
            for message in self.samples[index].messages
        ]
        layout = build_prompt(
            messages,
            self.tokenizer,
            bos_token_id=self.bos_token_id,
            settings=self.settings,
            add_generation_prompt=False,
        )
        return layout.truncate(self.max_length)


def epoch_order(num_samples: int, seed: int, epoch: int) -> list[int]:
    """The shuffled sample order of ``epoch``: the ``epoch``-th permutation drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epoch):
        torch.randperm(num_samples, generator=generator)
    return torch.randperm(num_samples, generator=generator).tolist()


def rank_indices(
    order: Sequence[int], steps: range, global_batch: int, rank: int, world_size: int
) -> list[int]:
    """This rank's samples for ``steps`` (epoch-relative), in micro-batch order.

    Step ``s`` takes ``order[s*G:(s+1)*G]``; rank ``r`` gets the ``r``-th contiguous share, so
    every step sees the same global batch whatever the number of processes.
    """
    share = global_batch // world_size
    return [
        index
        for step in steps
        for index in order[
            step * global_batch + rank * share : step * global_batch + (rank + 1) * share
        ]
    ]
