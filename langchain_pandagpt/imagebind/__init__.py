"""Clean-room ImageBind: the official model, checkpoint and preprocessing on modern PyTorch."""

from langchain_pandagpt.imagebind.checkpoint import (
    IMAGEBIND_HUGE_URL,
    convert_imagebind_checkpoint,
    load_imagebind,
    save_imagebind_safetensors,
)
from langchain_pandagpt.imagebind.model import (
    AUDIO,
    DEPTH,
    IMU,
    MODALITIES,
    TEXT,
    THERMAL,
    VISION,
    ImageBindConfig,
    ImageBindModel,
)


class ModalityType:
    """The official ``ModalityType`` names, for code written against upstream ImageBind."""

    VISION = VISION
    TEXT = TEXT
    AUDIO = AUDIO
    THERMAL = THERMAL
    DEPTH = DEPTH
    IMU = IMU


__all__ = [
    "IMAGEBIND_HUGE_URL",
    "MODALITIES",
    "ImageBindConfig",
    "ImageBindModel",
    "ModalityType",
    "convert_imagebind_checkpoint",
    "load_imagebind",
    "save_imagebind_safetensors",
]
