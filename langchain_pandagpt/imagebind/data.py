"""The official ImageBind loader functions, under their official names and defaults.

Each loader turns a list of inputs (paths, bytes, file objects and, where it makes sense, PIL
images or arrays) into the batch tensor the official ``imagebind.data`` module returns. The
implementations live next to this module, one per kind of media; this module only gathers
them so ``from langchain_pandagpt.imagebind import data`` reads like upstream code.
"""

from __future__ import annotations

from langchain_pandagpt.imagebind.audio import load_and_transform_audio_data
from langchain_pandagpt.imagebind.imu import load_and_transform_imu_data
from langchain_pandagpt.imagebind.tokenizer import load_and_transform_text
from langchain_pandagpt.imagebind.video import load_and_transform_video_data
from langchain_pandagpt.imagebind.vision import (
    load_and_transform_depth_data,
    load_and_transform_thermal_data,
    load_and_transform_vision_data,
)

__all__ = [
    "load_and_transform_audio_data",
    "load_and_transform_depth_data",
    "load_and_transform_imu_data",
    "load_and_transform_text",
    "load_and_transform_thermal_data",
    "load_and_transform_video_data",
    "load_and_transform_vision_data",
]
