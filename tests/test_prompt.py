"""The PandaGPT prompt layout, pinned position by position on a LLaMA-style tokenizer."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from langchain_pandagpt.conversation import MediaItem, Message
from langchain_pandagpt.generation.prompt import (
    IGNORE_INDEX,
    MediaSlot,
    PromptLayout,
    PromptSettings,
    TextSegment,
    build_prompt,
)
from langchain_pandagpt.model.tiny import build_tiny_tokenizer

BOS = 1
REFERENCE = PromptSettings(fidelity="reference")


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    """The tiny bundle's LLaMA-style tokenizer: ``▁`` word marks, byte fallback, no merges
    across newlines."""
    return build_tiny_tokenizer()


def ids(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[int, ...]:
    return tuple(tokenizer.encode(text, add_special_tokens=False))


def image(value: float = 0.0) -> MediaItem:
    return MediaItem("image", torch.full((4,), value), is_embedding=True)


def audio() -> MediaItem:
    return MediaItem("audio", torch.ones(4), is_embedding=True)


def test_reference_single_turn_layout(tokenizer: PreTrainedTokenizerBase) -> None:
    item = image()
    layout = build_prompt(
        [Message("human", "What is this?", [item])], tokenizer, bos_token_id=BOS, settings=REFERENCE
    )
    start = ids(tokenizer, "### Human: <Img>")
    after = ids(tokenizer, "</Img> What is this?\n### Assistant:")
    assert layout.segments == (
        TextSegment(start),
        MediaSlot((item,), fused=True),
        TextSegment(after),
    )
    assert layout.num_positions == 1 + len(start) + 1 + len(after)
    assert layout.media_positions() == [1 + len(start)]
    assert layout.labels() == [IGNORE_INDEX] * layout.num_positions
    assert layout.position_keys() == (BOS, *start, (item.content_hash(),), *after)


def test_multi_turn_training_layout_labels_and_demo_equivalence(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    messages = [
        Message("human", "What is in the picture?", [image()]),
        Message("assistant", "A dog with a ball."),
        Message("human", "Describe the sound."),
        Message("assistant", "A bird singing."),
    ]
    layout = build_prompt(
        messages, tokenizer, bos_token_id=BOS, settings=REFERENCE, add_generation_prompt=False
    )
    texts = [s for s in layout.segments if isinstance(s, TextSegment)]
    assert [s.ids for s in texts] == [
        ids(tokenizer, "### Human: <Img>"),
        ids(tokenizer, "</Img> What is in the picture?\n### Assistant:"),
        ids(tokenizer, "A dog with a ball.\n###"),
        ids(tokenizer, "Human: Describe the sound.\n### Assistant:"),
        ids(tokenizer, "A bird singing.\n###"),
    ]
    assert [s.trainable for s in texts] == [False, False, True, False, True]
    expected = [IGNORE_INDEX] * (1 + len(texts[0].ids) + 1 + len(texts[1].ids))
    expected += [*texts[2].ids, *[IGNORE_INDEX] * len(texts[3].ids), *texts[4].ids]
    assert layout.labels() == expected

    # The reference demo tokenized the history after the media as one string.
    demo = "</Img> What is in the picture?\n### Assistant: A dog with a ball.\n### Human: "
    demo += "Describe the sound.\n### Assistant: A bird singing.\n###"
    assert [i for s in texts[1:] for i in s.ids] == list(ids(tokenizer, demo))


def test_inference_prompt_is_a_prefix_of_the_continued_conversation(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    first = [Message("human", "What is in the picture?", [image()])]
    later = [*first, Message("assistant", "A dog."), Message("human", "And?")]
    short = build_prompt(first, tokenizer, bos_token_id=BOS, settings=REFERENCE)
    long = build_prompt(later, tokenizer, bos_token_id=BOS, settings=REFERENCE)
    assert long.segments[: len(short.segments)] == short.segments
    assert long.position_keys()[: short.num_positions] == short.position_keys()


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([Message("human", "hi")], "needs media in the first"),
        (
            [
                Message("human", "a", [image()]),
                Message("assistant", "b"),
                Message("human", "c", [image()]),
            ],
            "only in the first",
        ),
        ([Message("system", "be nice"), Message("human", "a", [image()])], "no system prompt"),
    ],
)
def test_reference_fidelity_rejects_what_the_reference_cannot_express(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        build_prompt(messages, tokenizer, bos_token_id=BOS, settings=REFERENCE)


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([Message("assistant", "hi")], "must start with a human"),
        ([Message("human", "a"), Message("assistant", "b")], "last message must be a human"),
        ([Message("assistant", "a", [image()])], "assistant messages cannot carry media"),
        ([Message("system", "a", [image()])], "system messages cannot carry media"),
    ],
)
def test_invalid_conversations(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        build_prompt(messages, tokenizer, bos_token_id=BOS)


def test_reference_settings_require_sum_fusion() -> None:
    with pytest.raises(ValueError, match="media_fusion='sum'"):
        PromptSettings(fidelity="reference", media_fusion="sequence")


def test_reference_sums_media_in_reference_modality_order(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    sound, picture = audio(), image()
    layout = build_prompt(
        [Message("human", "q", [sound, picture])], tokenizer, bos_token_id=BOS, settings=REFERENCE
    )
    assert layout.segments[1] == MediaSlot((picture, sound), fused=True)
    after = ids(tokenizer, "</Img> q\n### Assistant:")
    assert layout.num_positions == 1 + len(ids(tokenizer, "### Human: <Img>")) + 1 + len(after)


def test_default_fidelity_system_text_only_and_later_media_turns(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    first, second, third = image(1.0), image(2.0), audio()
    messages = [
        Message("system", "Be brief."),
        Message("human", "Hello"),
        Message("assistant", "Hi."),
        Message("human", "Compare", [first, second]),
        Message("human", "and this", [third]),
    ]
    layout = build_prompt(
        messages, tokenizer, bos_token_id=BOS, settings=PromptSettings(media_fusion="sequence")
    )
    assert layout.segments == (
        TextSegment(ids(tokenizer, "Be brief.\n")),
        TextSegment(ids(tokenizer, "### Human: Hello\n### Assistant:")),
        TextSegment(ids(tokenizer, "Hi.\n###"), trainable=True),
        TextSegment(ids(tokenizer, "Human: <Img>")),
        MediaSlot((first, second, third), fused=False),
        TextSegment(ids(tokenizer, "</Img> Compare\nand this\n### Assistant:")),
    )
    before = ["Be brief.\n", "### Human: Hello\n### Assistant:", "Hi.\n###", "Human: <Img>"]
    media_start = 1 + sum(len(ids(tokenizer, text)) for text in before)
    assert layout.media_positions() == [media_start, media_start + 1, media_start + 2]
    assert layout.media_items == [first, second, third]
    after = ids(tokenizer, "</Img> Compare\nand this\n### Assistant:")
    assert layout.num_positions == media_start + 3 + len(after)


def test_sum_fusion_takes_one_position_per_slot(tokenizer: PreTrainedTokenizerBase) -> None:
    messages = [
        Message("human", "a", [image(1.0), audio()]),
        Message("assistant", "b"),
        Message("human", "c", [image(2.0)]),
    ]
    layout = build_prompt(messages, tokenizer, bos_token_id=BOS)
    slots = [s for s in layout.segments if isinstance(s, MediaSlot)]
    assert [s.num_positions for s in slots] == [1, 1]
    assert len(layout.media_positions()) == 2


def test_truncate_caps_text_after_the_first_media_slot(tokenizer: PreTrainedTokenizerBase) -> None:
    messages = [
        Message("human", "What is in the picture?", [image()]),
        Message("assistant", "A dog with a ball."),
    ]
    layout = build_prompt(
        messages, tokenizer, bos_token_id=BOS, settings=REFERENCE, add_generation_prompt=False
    )
    prefix = 1 + len(ids(tokenizer, "### Human: <Img>")) + 1
    question = ids(tokenizer, "</Img> What is in the picture?\n### Assistant:")
    cut = layout.truncate(len(question) + 2)
    assert cut.num_positions == prefix + len(question) + 2
    assert cut.labels()[-2:] == list(ids(tokenizer, "A dog with a ball.\n###")[:2])
    assert layout.truncate(0).num_positions == prefix
    assert layout.truncate(10_000) == layout


def test_truncate_without_media_counts_all_text() -> None:
    layout = PromptLayout(BOS, (TextSegment((5, 6, 7)), TextSegment((8, 9), trainable=True)))
    assert layout.truncate(4).segments == (TextSegment((5, 6, 7)), TextSegment((8,), True))
