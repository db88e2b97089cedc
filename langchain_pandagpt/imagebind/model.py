"""ImageBind in one readable file: config, towers, and the six-modality model.

A clean-room reimplementation of ``facebookresearch/ImageBind``'s ``ImageBindModel`` whose module
tree reproduces the official state-dict key names and shapes exactly, so the official
``imagebind_huge.pth`` loads with ``strict=True``. Attention runs through
``F.scaled_dot_product_attention``; there is no dependency on timm, einops or torchvision.

Layout of every tower (``<m>`` is one of :data:`MODALITIES`)::

    modality_preprocessors.<m>   stem (+ CLS token) + learned position embedding
    modality_trunks.<m>          pre-norm transformer blocks (tokens stay batch-first here)
    modality_heads.<m>           LayerNorm, pick the CLS (or end-of-text) token, project
    modality_postprocessors.<m>  L2-normalise, then (all but vision) multiply by a logit scale
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Final

import torch
import torch.nn.functional as F
from torch import nn

VISION: Final = "vision"
TEXT: Final = "text"
AUDIO: Final = "audio"
DEPTH: Final = "depth"
THERMAL: Final = "thermal"
IMU: Final = "imu"
#: All modalities, in the official order of the module dicts.
MODALITIES: Final[tuple[str, ...]] = (VISION, TEXT, AUDIO, DEPTH, THERMAL, IMU)

TEXT_CONTEXT_LENGTH: Final = 77
TEXT_VOCAB_SIZE: Final = 49408
IMAGE_SIZE: Final = 224
IMU_CHANNELS: Final = 6
IMU_SAMPLES: Final = 2000
IMU_PATCH: Final = 8  # the official IMU preprocessor hard-codes 8 samples per patch
MAX_LOGIT_SCALE: Final = 100.0
#: Fixed (non-learnable) logit scales of the official postprocessors; text's is learned.
FIXED_LOGIT_SCALES: Final[dict[str, float]] = {AUDIO: 20.0, DEPTH: 5.0, THERMAL: 10.0, IMU: 5.0}


@dataclass
class ImageBindConfig:
    """Hyper-parameters of :class:`ImageBindModel`.

    Field names and defaults are exactly the keyword arguments of the official
    ``ImageBindModel.__init__``, so an official config dict can be passed as ``**kwargs``.
    """

    video_frames: int = 2
    kernel_size: tuple[int, int, int] = (2, 14, 14)
    audio_kernel_size: int = 16
    audio_stride: int = 10
    out_embed_dim: int = 768
    vision_embed_dim: int = 1024
    vision_num_blocks: int = 24
    vision_num_heads: int = 16
    audio_embed_dim: int = 768
    audio_num_blocks: int = 12
    audio_num_heads: int = 12
    audio_num_mel_bins: int = 128
    audio_target_len: int = 204
    audio_drop_path: float = 0.1
    text_embed_dim: int = 768
    text_num_blocks: int = 12
    text_num_heads: int = 12
    depth_embed_dim: int = 384
    depth_kernel_size: int = 16
    depth_num_blocks: int = 12
    depth_num_heads: int = 8
    depth_drop_path: float = 0.0
    thermal_embed_dim: int = 768
    thermal_kernel_size: int = 16
    thermal_num_blocks: int = 12
    thermal_num_heads: int = 12
    thermal_drop_path: float = 0.0
    imu_embed_dim: int = 512
    imu_kernel_size: int = 8
    imu_num_blocks: int = 6
    imu_num_heads: int = 8
    imu_drop_path: float = 0.7

    def __post_init__(self) -> None:
        self.kernel_size = tuple(self.kernel_size)  # type: ignore[assignment]  # JSON gives lists

    @classmethod
    def huge(cls) -> ImageBindConfig:
        """The ``imagebind_huge`` configuration of the released checkpoint."""
        return cls(
            vision_embed_dim=1280,
            vision_num_blocks=32,
            vision_num_heads=16,
            text_embed_dim=1024,
            text_num_blocks=24,
            text_num_heads=16,
            out_embed_dim=1024,
            audio_drop_path=0.1,
            imu_drop_path=0.7,
        )

    @classmethod
    def tiny(cls) -> ImageBindConfig:
        """A few-hundred-kB config with every tower (the golden test model's shapes).

        Used by tiny test bundles, CPU demos and benchmarks; output width is 32, not 1024.
        """
        return cls(
            out_embed_dim=32,
            vision_embed_dim=64,
            vision_num_blocks=2,
            vision_num_heads=4,
            audio_embed_dim=56,
            audio_num_blocks=2,
            audio_num_heads=4,
            text_embed_dim=48,
            text_num_blocks=2,
            text_num_heads=4,
            depth_embed_dim=52,
            depth_num_blocks=2,
            depth_num_heads=4,
            thermal_embed_dim=60,
            thermal_num_blocks=2,
            thermal_num_heads=4,
            imu_embed_dim=44,
            imu_num_blocks=2,
            imu_num_heads=4,
        )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ImageBindConfig:
        """Build from a dict, rejecting unknown keys with a message that lists them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ImageBindConfig fields: {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``kernel_size`` as a list)."""
        values = asdict(self)
        values["kernel_size"] = list(self.kernel_size)
        return values

    def embed_dim(self, modality: str) -> int:
        """Width of the trunk of ``modality``."""
        return int(getattr(self, f"{modality}_embed_dim"))


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample while training (identity in eval)."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names.

    ``bias_k``/``bias_v`` (audio, depth, thermal, IMU) are appended as one extra key/value
    position at the end of the sequence, exactly as torch's MHA does with ``add_bias_kv``.
    """

    def __init__(self, dim: int, num_heads: int, add_bias_kv: bool) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.bias_k: nn.Parameter | None = None
        self.bias_v: nn.Parameter | None = None
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, dim))
            self.bias_v = nn.Parameter(torch.empty(1, 1, dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.expand(batch, 1, dim)], dim=1)
            v = torch.cat([v, self.bias_v.expand(batch, 1, dim)], dim=1)
            if attn_mask is not None:
                attn_mask = F.pad(attn_mask, (0, 1))
        head_dim = dim // self.num_heads

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, self.num_heads, head_dim).transpose(1, 2)

        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(
            split_heads(q), split_heads(k), split_heads(v), attn_mask=attn_mask
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, dim))


class Mlp(nn.Module):
    """Two-layer MLP with exact (erf) GELU, ratio 4."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (the official ``BlockWithMasking`` without layer scale)."""

    def __init__(self, dim: int, num_heads: int, add_bias_kv: bool, drop_path: float) -> None:
        super().__init__()
        self.attn = Attention(dim, num_heads, add_bias_kv)
        self.norm_1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim)
        self.norm_2 = nn.LayerNorm(dim, eps=1e-6)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm_1(x), attn_mask))
        return x + self.drop_path(self.mlp(self.norm_2(x)))


class Trunk(nn.Module):
    """A stack of blocks; only the vision trunk has the pre-transformer LayerNorm (``ln_pre``)."""

    def __init__(
        self,
        dim: int,
        num_blocks: int,
        num_heads: int,
        *,
        pre_norm: bool,
        add_bias_kv: bool,
        drop_path: float,
    ) -> None:
        super().__init__()
        # The official model names this Sequential(LayerNorm, Rearrange); only index 0 has weights.
        self.pre_transformer_layer = (
            nn.Sequential(nn.LayerNorm(dim, eps=1e-6)) if pre_norm else nn.Sequential()
        )
        rates = torch.linspace(0.0, drop_path, num_blocks, device="cpu").tolist()
        self.blocks = nn.ModuleList(Block(dim, num_heads, add_bias_kv, rate) for rate in rates)

    def forward(self, tokens: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.pre_transformer_layer(tokens)
        for block in self.blocks:
            x = block(x, attn_mask)
        return x


class PatchStem(nn.Module):
    """A patchifying projection, optionally followed by a LayerNorm (stems' eps is 1e-5)."""

    def __init__(self, proj: nn.Module, norm_dim: int | None) -> None:
        super().__init__()
        self.proj = proj
        self.norm_layer = nn.LayerNorm(norm_dim) if norm_dim else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        return self.norm_layer(tokens) if self.norm_layer is not None else tokens


class RepeatToVideo(nn.Module):
    """Give still images (B,C,H,W) a time axis of ``frames`` repeats (official ``PadIm2Video``)."""

    def __init__(self, frames: int) -> None:
        super().__init__()
        self.frames = frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(2)
        if x.shape[2] == 1:
            x = x.expand(-1, -1, self.frames, -1, -1)
        return x


class PositionEmbedding(nn.Module):
    """Holds a learned position embedding under the official ``pos_embed`` name."""

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.empty(1, num_tokens, dim))


class PatchPreprocessor(nn.Module):
    """Stem + CLS token + position embedding for image-like modalities.

    The stem attribute name differs per modality in the official checkpoint (``rgbt_stem``,
    ``depth_stem``), so it is registered under the name given.
    """

    def __init__(
        self, stem_name: str, stem: PatchStem, num_patches: int, dim: int, input_shape: str
    ) -> None:
        super().__init__()
        self.stem_name = stem_name
        self.input_shape = input_shape
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.add_module(stem_name, stem)
        self.pos_embedding_helper = PositionEmbedding(num_patches + 1, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem: PatchStem = getattr(self, self.stem_name)
        patches = stem(x)
        expected = self.pos_embedding_helper.pos_embed.shape[1] - 1
        if patches.shape[1] != expected:
            raise ValueError(
                f"input of shape {tuple(x.shape)} gives {patches.shape[1]} patches, the model "
                f"expects {expected}: pass {self.input_shape}"
            )
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.pos_embedding_helper.pos_embed


class TextPreprocessor(nn.Module):
    """Token + position embeddings and the causal mask (a checkpoint buffer)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.empty(1, TEXT_CONTEXT_LENGTH, dim))
        mask = torch.full((TEXT_CONTEXT_LENGTH, TEXT_CONTEXT_LENGTH), float("-inf")).triu_(1)
        self.register_buffer("mask", mask)
        self.token_embedding = nn.Embedding(TEXT_VOCAB_SIZE, dim)

    def forward(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns tokens, the attention mask and the end-of-text positions.

        Causal masking means the end-of-text output depends only on earlier positions, so the
        sequence is cut after the last end-of-text token of the batch: same result, less work.
        """
        if token_ids.ndim != 2 or token_ids.shape[1] != TEXT_CONTEXT_LENGTH:
            raise ValueError(
                f"text input must be token ids of shape (B, {TEXT_CONTEXT_LENGTH}), got "
                f"{tuple(token_ids.shape)}: use load_and_transform_text"
            )
        eot = token_ids.argmax(dim=-1)
        length = int(eot.max()) + 1
        tokens = self.token_embedding(token_ids[:, :length]) + self.pos_embed[:, :length]
        mask = self.get_buffer("mask")
        return tokens, mask[:length, :length], eot


class ImuPreprocessor(nn.Module):
    """Cuts (B,6,2000) signals into 250 patches of 6x8 samples, then Linear + LN + CLS + pos."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        num_patches = IMU_SAMPLES // IMU_PATCH
        self.pos_embed = nn.Parameter(torch.empty(1, num_patches + 1, dim))
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.imu_stem = PatchStem(nn.Linear(IMU_CHANNELS * IMU_PATCH, dim, bias=False), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or tuple(x.shape[1:]) != (IMU_CHANNELS, IMU_SAMPLES):
            raise ValueError(
                f"IMU input must have shape (B, {IMU_CHANNELS}, {IMU_SAMPLES}), got "
                f"{tuple(x.shape)}: use load_and_transform_imu_data"
            )
        patches = x.unfold(-1, IMU_PATCH, IMU_PATCH).permute(0, 2, 1, 3)  # B, 250, 6, 8
        patches = patches.reshape(x.shape[0], -1, IMU_CHANNELS * IMU_PATCH)
        stem = self.imu_stem
        tokens = stem.proj(patches)
        if stem.norm_layer is not None:
            tokens = stem.norm_layer(tokens)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed


class SelectToken(nn.Module):
    """Picks one token per sequence (the CLS token at ``index`` 0)."""

    def __init__(self, index: int = 0) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.index, ...]


class TextHead(nn.Module):
    """Takes the end-of-text token of each row, then LayerNorm and projection."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, out_dim, bias=False))

    def forward(self, x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        return self.proj(x[torch.arange(x.shape[0], device=x.device), eot])


class Normalize(nn.Module):
    """L2 normalisation along the last dimension."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1, p=2)


class LogitScale(nn.Module):
    """Multiplies by ``min(exp(log_logit_scale), 100)``; learnable for text, a buffer otherwise."""

    def __init__(self, init: float, learnable: bool) -> None:
        super().__init__()
        value = torch.ones([]) * math.log(init)
        if learnable:
            self.log_logit_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_logit_scale", value)

    def scale(self) -> torch.Tensor:
        log_scale: torch.Tensor = self.log_logit_scale
        return log_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale() * x


def _cls_head(dim: int, out_dim: int, dropout: float | None = None) -> nn.Sequential:
    layers: list[nn.Module] = [nn.LayerNorm(dim, eps=1e-6), SelectToken(0)]
    if dropout is not None:
        layers.append(nn.Dropout(dropout))  # only the IMU head has it: its Linear is index 3
    layers.append(nn.Linear(dim, out_dim, bias=False))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class ImageBindModel(nn.Module):
    """ImageBind with the official module tree, built for the requested modalities only.

    ``modalities`` limits which towers exist (and so which keys ``state_dict`` has): a caller
    that needs only vision and audio never allocates the text, depth, thermal or IMU towers.
    """

    def __init__(
        self, config: ImageBindConfig | None = None, modalities: Iterable[str] | None = None
    ) -> None:
        super().__init__()
        self.config = config or ImageBindConfig()
        wanted = MODALITIES if modalities is None else tuple(modalities)
        unknown = sorted(set(wanted) - set(MODALITIES))
        if unknown:
            raise ValueError(
                f"unknown modalities {unknown}; ImageBind knows {', '.join(MODALITIES)}"
            )
        self.modalities = tuple(m for m in MODALITIES if m in wanted)
        builders = {
            VISION: self._vision,
            TEXT: self._text,
            AUDIO: self._audio,
            DEPTH: self._depth,
            THERMAL: self._thermal,
            IMU: self._imu,
        }
        self.modality_preprocessors = nn.ModuleDict()
        self.modality_trunks = nn.ModuleDict()
        self.modality_heads = nn.ModuleDict()
        self.modality_postprocessors = nn.ModuleDict()
        for modality in self.modalities:
            builders[modality]()
            self._add_postprocessor(modality)

    # -- tower builders --------------------------------------------------------------------

    def _add_tower(
        self,
        modality: str,
        preprocessor: nn.Module,
        *,
        pre_norm: bool = False,
        add_bias_kv: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        cfg = self.config
        dim = cfg.embed_dim(modality)
        self.modality_preprocessors[modality] = preprocessor
        self.modality_trunks[modality] = Trunk(
            dim,
            getattr(cfg, f"{modality}_num_blocks"),
            getattr(cfg, f"{modality}_num_heads"),
            pre_norm=pre_norm,
            add_bias_kv=add_bias_kv,
            drop_path=drop_path,
        )

    def _vision(self) -> None:
        cfg = self.config
        dim = cfg.vision_embed_dim
        kt, kh, kw = cfg.kernel_size
        conv = nn.Conv3d(3, dim, kernel_size=cfg.kernel_size, stride=cfg.kernel_size, bias=False)
        stem = PatchStem(nn.Sequential(RepeatToVideo(2), conv), None)
        patches = (cfg.video_frames // kt) * (IMAGE_SIZE // kh) * (IMAGE_SIZE // kw)
        shape = f"images (B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}) or video clips (B, S, 3, T, H, W)"
        pre = PatchPreprocessor("rgbt_stem", stem, patches, dim, shape)
        self._add_tower(VISION, pre, pre_norm=True, add_bias_kv=False)
        self.modality_heads[VISION] = _cls_head(dim, cfg.out_embed_dim)

    def _text(self) -> None:
        cfg = self.config
        self._add_tower(TEXT, TextPreprocessor(cfg.text_embed_dim), add_bias_kv=False)
        self.modality_heads[TEXT] = TextHead(cfg.text_embed_dim, cfg.out_embed_dim)

    def _audio(self) -> None:
        cfg = self.config
        dim, kernel, stride = cfg.audio_embed_dim, cfg.audio_kernel_size, cfg.audio_stride
        conv = nn.Conv2d(1, dim, kernel_size=kernel, stride=stride, bias=False)
        rows = (cfg.audio_num_mel_bins - kernel) // stride + 1
        cols = (cfg.audio_target_len - kernel) // stride + 1
        shape = f"mel spectrograms (B, 1, {cfg.audio_num_mel_bins}, {cfg.audio_target_len})"
        pre = PatchPreprocessor("rgbt_stem", PatchStem(conv, dim), rows * cols, dim, shape)
        self._add_tower(AUDIO, pre, drop_path=cfg.audio_drop_path)
        self.modality_heads[AUDIO] = _cls_head(dim, cfg.out_embed_dim)

    def _single_channel_image_tower(self, modality: str, stem_name: str) -> None:
        cfg = self.config
        dim = cfg.embed_dim(modality)
        kernel = getattr(cfg, f"{modality}_kernel_size")
        conv = nn.Conv2d(1, dim, kernel_size=kernel, stride=kernel, bias=False)
        patches = (IMAGE_SIZE // kernel) ** 2
        shape = f"single-channel maps (B, 1, {IMAGE_SIZE}, {IMAGE_SIZE})"
        pre = PatchPreprocessor(stem_name, PatchStem(conv, dim), patches, dim, shape)
        self._add_tower(modality, pre, drop_path=getattr(cfg, f"{modality}_drop_path"))
        self.modality_heads[modality] = _cls_head(dim, cfg.out_embed_dim)

    def _depth(self) -> None:
        self._single_channel_image_tower(DEPTH, "depth_stem")

    def _thermal(self) -> None:
        self._single_channel_image_tower(THERMAL, "rgbt_stem")

    def _imu(self) -> None:
        cfg = self.config
        self._add_tower(IMU, ImuPreprocessor(cfg.imu_embed_dim), drop_path=cfg.imu_drop_path)
        self.modality_heads[IMU] = _cls_head(cfg.imu_embed_dim, cfg.out_embed_dim, dropout=0.5)

    def _add_postprocessor(self, modality: str) -> None:
        if modality == VISION:
            self.modality_postprocessors[modality] = Normalize()
        elif modality == TEXT:
            scale = LogitScale(1 / 0.07, learnable=True)
            self.modality_postprocessors[modality] = nn.Sequential(Normalize(), scale)
        else:
            scale = LogitScale(FIXED_LOGIT_SCALES[modality], learnable=False)
            self.modality_postprocessors[modality] = nn.Sequential(Normalize(), scale)

    # -- forward ---------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def logit_scale(self, modality: str) -> float:
        """The scale the postprocessor of ``modality`` applies (1.0 for vision)."""
        post = self.modality_postprocessors[modality]
        scale = post[1] if isinstance(post, nn.Sequential) else None
        return float(scale.scale().detach()) if isinstance(scale, LogitScale) else 1.0

    def encode(
        self, modality: str, value: torch.Tensor, *, logit_scale: bool = True
    ) -> torch.Tensor:
        """Embeds one modality; inputs with ndim >= 5 are clips, averaged after postprocessing.

        ``logit_scale=False`` stops after the L2 normalisation (PandaGPT does this for audio).
        """
        if modality not in self.modality_trunks:
            built = ", ".join(self.modalities) or "none"
            raise ValueError(
                f"modality {modality!r} is not in this model (built: {built}); "
                f"known modalities: {', '.join(MODALITIES)}"
            )
        value = value.to(self.device)
        if value.is_floating_point():
            value = value.to(self.dtype)
        clips = value.shape[:2] if value.ndim >= 5 else None
        if clips is not None:
            value = value.reshape(clips[0] * clips[1], *value.shape[2:])
        head_output = self._head_output(modality, value)
        post = self.modality_postprocessors[modality]
        if isinstance(post, nn.Sequential) and not logit_scale:
            embedding = post[0](head_output)
        else:
            embedding = post(head_output)
        if clips is not None:
            embedding = embedding.reshape(clips[0], clips[1], -1).mean(dim=1)
        return embedding

    def _head_output(self, modality: str, value: torch.Tensor) -> torch.Tensor:
        preprocessor = self.modality_preprocessors[modality]
        trunk = self.modality_trunks[modality]
        head = self.modality_heads[modality]
        if modality == TEXT:
            tokens, mask, eot = preprocessor(value)
            output: torch.Tensor = head(trunk(tokens, mask), eot)
        else:
            output = head(trunk(preprocessor(value)))
        return output

    def forward(
        self, inputs: Mapping[str, torch.Tensor], *, unscaled: Collection[str] = ()
    ) -> dict[str, torch.Tensor]:
        """``{modality: batch}`` to ``{modality: (B, out_embed_dim)}``, like the official model.

        Modalities listed in ``unscaled`` skip the logit scale (L2-normalised only).
        """
        return {
            modality: self.encode(modality, value, logit_scale=modality not in unscaled)
            for modality, value in inputs.items()
        }

    @torch.no_grad()
    def init_random_weights(self, generator: torch.Generator | None = None) -> None:
        """Initialise every weight randomly (for tiny test models; real use loads a checkpoint).

        Follows the spirit of the official init (small normal weights, unit LayerNorms) while
        drawing everything from ``generator``, so a seed gives the same model on any machine.
        """
        for name, tensor in self.state_dict(keep_vars=True).items():
            if name.endswith("log_logit_scale") or name.endswith(".mask"):
                continue
            if tensor.ndim == 1 and name.endswith("weight"):  # LayerNorm gains
                tensor.copy_(1.0 + 0.05 * torch.randn(tensor.shape, generator=generator))
            elif tensor.ndim == 1:  # biases
                tensor.copy_(0.02 * torch.randn(tensor.shape, generator=generator))
            else:
                fan_in = tensor[0].numel() if tensor.ndim > 1 else 1
                std = 1.0 / math.sqrt(max(fan_in, 1)) if "pos_embed" not in name else 0.02
                tensor.copy_(std * torch.randn(tensor.shape, generator=generator))
