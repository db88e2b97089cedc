"""PandaGPT prompt layout: a conversation as token segments and media slots.

The reference (``yxuansu/PandaGPT``) feeds the LLM ``[BOS] "### Human: <Img>" [media]
"</Img> " + q + "\\n### Assistant:"`` and, for every later exchange, the answer ``a + "\\n###"``
followed by ``"Human: " + q + "\\n### Assistant:"``. Every piece is tokenized on its own with
``add_special_tokens=False``.

Inference and training use this one layout. The reference trainer tokenizes segment by segment
exactly like this; the reference demo instead tokenized the whole history after ``</Img>`` as one
string (``q1 + "\\n### Assistant: " + a1 + "\\n### Human: " + q2 ...``). With a SentencePiece
tokenizer that adds a dummy-prefix space to every segment the two are token-identical (the
segment's leading ``▁`` plays the part of the demo's space), so a model trained on this layout
sees the demo's tokens at inference and vice versa (pinned by ``tests/test_prompt.py``).

Two fidelities:

* ``"reference"``: exactly the released model's template. One media slot, in the first human
  turn, with at least one item; no system prompt. Anything else is a ``ValueError``.
* ``"default"``: the same strings, extended. System messages become one leading plain segment
  ``"\\n".join(texts) + "\\n"`` before the first ``###``; a human turn without media is
  ``"### Human: " + q + "\\n### Assistant:"`` (first turn) or ``"Human: " + q + ...`` (later);
  any human turn may carry media, each turn with media getting its own ``<Img>``...``</Img> ``
  wrapper.

Two media fusions (how the items of one slot become input positions):

* ``"sum"``: the reference rule, one position holding the sum of the projected item tokens (so
  the projection bias is counted once per item). In reference fidelity the items are ordered
  image, audio, video, thermal before summing, as the reference concatenates them, so the
  floating-point sum matches.
* ``"sequence"``: one position per item, in message order (default fidelity only).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeAlias

from langchain_pandagpt.conversation import MediaItem, Message

Fidelity: TypeAlias = Literal["default", "reference"]
MediaFusion: TypeAlias = Literal["sum", "sequence"]
#: Content of one input position, for prefix matching: a token id, or the content hashes of the
#: media items fused into that position.
PositionKey: TypeAlias = int | tuple[str, ...]

HUMAN_START = "### Human: "
HUMAN_LATER = "Human: "
MEDIA_OPEN = "<Img>"
MEDIA_CLOSE = "</Img> "
ASSISTANT_CUE = "\n### Assistant:"
#: Ends every assistant answer; trained on, and the default-fidelity stop string.
TURN_END = "\n###"
#: Label of positions that carry no loss (HF cross-entropy ``ignore_index``).
IGNORE_INDEX = -100
#: The order in which the reference sums modality features (``extract_multimodal_feature``).
REFERENCE_MEDIA_ORDER: tuple[str, ...] = ("image", "audio", "video", "thermal")


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the layout needs."""

    def encode(self, text: str, *, add_special_tokens: bool = ...) -> list[int]: ...

    def __hash__(self) -> int: ...  # segment ids are cached per tokenizer


@dataclass(frozen=True)
class PromptSettings:
    """How a conversation is laid out: template fidelity and media fusion."""

    fidelity: Fidelity = "default"
    media_fusion: MediaFusion = "sum"

    def __post_init__(self) -> None:
        if self.fidelity not in ("default", "reference"):
            raise ValueError(f"fidelity must be 'default' or 'reference', not {self.fidelity!r}")
        if self.media_fusion not in ("sum", "sequence"):
            raise ValueError(f"media_fusion must be 'sum' or 'sequence', not {self.media_fusion!r}")
        if self.fidelity == "reference" and self.media_fusion != "sum":
            raise ValueError(
                "reference fidelity feeds all media as one summed position; "
                "use media_fusion='sum' or fidelity='default'"
            )


@dataclass(frozen=True)
class TextSegment:
    """Token ids of one separately tokenized string; ``trainable`` ones are training targets."""

    ids: tuple[int, ...]
    trainable: bool = False

    @property
    def num_positions(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class MediaSlot:
    """The media of one human turn: one summed position (``fused``) or one position per item."""

    items: tuple[MediaItem, ...]
    fused: bool

    @property
    def num_positions(self) -> int:
        return 1 if self.fused else len(self.items)

    def position_keys(self) -> list[PositionKey]:
        hashes = tuple(item.content_hash() for item in self.items)
        return [hashes] if self.fused else [(h,) for h in hashes]


Segment: TypeAlias = TextSegment | MediaSlot


@dataclass(frozen=True)
class PromptLayout:
    """The LLM input of one conversation: a BOS position followed by segments, in order."""

    bos_token_id: int
    segments: tuple[Segment, ...] = field(default_factory=tuple)

    @property
    def num_positions(self) -> int:
        """Input length, media counted as the positions they take."""
        return 1 + sum(segment.num_positions for segment in self.segments)

    def spans(self) -> Iterator[tuple[int, Segment]]:
        """Each segment with its first input position."""
        start = 1
        for segment in self.segments:
            yield start, segment
            start += segment.num_positions

    @property
    def media_items(self) -> list[MediaItem]:
        """All media items, in layout order."""
        return [item for s in self.segments if isinstance(s, MediaSlot) for item in s.items]

    def media_positions(self) -> list[int]:
        """Input positions holding media tokens."""
        return [
            start + offset
            for start, segment in self.spans()
            if isinstance(segment, MediaSlot)
            for offset in range(segment.num_positions)
        ]

    def labels(self) -> list[int]:
        """Training labels, one per input position (unshifted, as HF causal LMs expect).

        ``IGNORE_INDEX`` everywhere except the assistant answers and their trailing ``"\\n###"``,
        which teaches the model to stop (reference ``build_one_instance``).
        """
        labels = [IGNORE_INDEX]
        for segment in self.segments:
            if isinstance(segment, TextSegment) and segment.trainable:
                labels.extend(segment.ids)
            else:
                labels.extend([IGNORE_INDEX] * segment.num_positions)
        return labels

    def position_keys(self) -> tuple[PositionKey, ...]:
        """Per-position content (token id or media hashes): two prompts that agree on the first
        ``n`` keys have identical first ``n`` hidden states, which is what prefix reuse needs."""
        keys: list[PositionKey] = [self.bos_token_id]
        for segment in self.segments:
            if isinstance(segment, TextSegment):
                keys.extend(segment.ids)
            else:
                keys.extend(segment.position_keys())
        return tuple(keys)

    def truncate(self, max_text_tokens: int) -> PromptLayout:
        """Keep at most ``max_text_tokens`` text tokens after the first media slot.

        That is the reference ``max_tgt_len`` rule: it cuts the text that follows the prefix
        ``[BOS] "### Human: <Img>" [media]`` and never the prefix itself. Without media, all text
        counts. Media slots that come after the cut are dropped.
        """
        if max_text_tokens < 0:
            raise ValueError(f"max_text_tokens must be >= 0, got {max_text_tokens}")
        first_media = next((i for i, s in enumerate(self.segments) if isinstance(s, MediaSlot)), -1)
        kept: list[Segment] = list(self.segments[: first_media + 1])
        budget = max_text_tokens
        for segment in self.segments[first_media + 1 :]:
            if budget == 0:
                break
            if isinstance(segment, TextSegment):
                segment = TextSegment(segment.ids[:budget], segment.trainable)
                budget -= len(segment.ids)
            kept.append(segment)
        return PromptLayout(self.bos_token_id, tuple(kept))


@dataclass
class _Turn:
    role: Literal["human", "assistant"]
    text: str
    media: list[MediaItem]


def _turns(messages: Sequence[Message]) -> tuple[list[str], list[_Turn]]:
    """Split off system texts and merge consecutive messages of one role into a turn."""
    system: list[str] = []
    turns: list[_Turn] = []
    for message in messages:
        if message.role == "system":
            if message.media:
                raise ValueError("system messages cannot carry media; attach it to a human turn")
            system.append(message.text)
        elif message.role in ("human", "assistant"):
            if message.role == "assistant" and message.media:
                raise ValueError("assistant messages cannot carry media; attach it to a human turn")
            if turns and turns[-1].role == message.role:
                turns[-1].text += "\n" + message.text
                turns[-1].media.extend(message.media)
            else:
                turns.append(_Turn(message.role, message.text, list(message.media)))
        else:
            raise ValueError(f"unknown role {message.role!r}; use 'system', 'human' or 'assistant'")
    if not turns or turns[0].role != "human":
        raise ValueError("a conversation must start with a human message (after any system ones)")
    return system, turns


@functools.lru_cache(maxsize=8192)
def _cached_encode(tokenizer: Tokenizer, string: str) -> tuple[int, ...]:
    return tuple(tokenizer.encode(string, add_special_tokens=False))


def _encode_segment(tokenizer: Tokenizer, string: str) -> tuple[int, ...]:
    """Token ids of one segment. A continuing chat re-lays out its whole history every turn,
    so earlier segments come from a cache (tokenizing is deterministic) instead of the
    tokenizer, whose per-call overhead dominates prefix-reusing turns of small models."""
    try:
        return _cached_encode(tokenizer, string)
    except TypeError:  # an unhashable tokenizer: no caching
        return tuple(tokenizer.encode(string, add_special_tokens=False))


def build_prompt(
    messages: Sequence[Message],
    tokenizer: Tokenizer,
    *,
    bos_token_id: int,
    settings: PromptSettings | None = None,
    add_generation_prompt: bool = True,
) -> PromptLayout:
    """Lay out ``messages`` in the PandaGPT template (see the module docstring).

    Consecutive messages of one role are merged into one turn (texts joined by a newline, media
    kept in order). With ``add_generation_prompt`` the conversation must end with a human turn,
    whose segment ends in ``"\\n### Assistant:"`` for the model to answer; without it (training)
    it may end with an assistant answer, whose tokens and ``"\\n###"`` are the targets.
    """
    settings = settings or PromptSettings()
    reference = settings.fidelity == "reference"
    system, turns = _turns(messages)
    if add_generation_prompt and turns[-1].role != "human":
        raise ValueError("the last message must be a human one to generate an answer")
    if reference:
        if system:
            raise ValueError("reference fidelity has no system prompt; use fidelity='default'")
        if not turns[0].media:
            raise ValueError(
                "reference fidelity needs media in the first human message "
                "(the reference template always has one media slot); use fidelity='default'"
            )
        if any(turn.media for turn in turns[1:]):
            raise ValueError(
                "reference fidelity allows media only in the first human message; "
                "use fidelity='default' for media in later turns"
            )

    def text(string: str, trainable: bool = False) -> TextSegment:
        return TextSegment(_encode_segment(tokenizer, string), trainable)

    segments: list[Segment] = []
    if system:
        segments.append(text("\n".join(system) + "\n"))
    for index, turn in enumerate(turns):
        if turn.role == "assistant":
            segments.append(text(turn.text + TURN_END, trainable=True))
            continue
        opener = HUMAN_START if index == 0 else HUMAN_LATER
        if not turn.media:
            segments.append(text(opener + turn.text + ASSISTANT_CUE))
            continue
        media = turn.media
        if reference:
            media = sorted(media, key=_reference_rank)
        segments.append(text(opener + MEDIA_OPEN))
        segments.append(MediaSlot(tuple(media), fused=settings.media_fusion == "sum"))
        segments.append(text(MEDIA_CLOSE + turn.text + ASSISTANT_CUE))
    return PromptLayout(bos_token_id, tuple(segments))


def _reference_rank(item: MediaItem) -> int:
    order = REFERENCE_MEDIA_ORDER
    return order.index(item.modality) if item.modality in order else len(order)
