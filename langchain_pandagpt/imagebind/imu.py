"""IMU loader producing ImageBind's (B, 6, 2000) inertial input batches.

Upstream ships no IMU loader: the model only fixes the tensor contract. ImageBind was trained
on Ego4D IMU windows of 6 channels (accelerometer x/y/z and gyroscope x/y/z) by 2000 samples;
the paper describes them as 5-second windows. Channel order, units and normalisation were never
published, so this loader passes the values through unchanged: arrange them as Ego4D's IMU
streams are, as closely as your data allows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
import torch

from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.imagebind.sources import MediaSource
from langchain_pandagpt.imagebind.vision import check_batch, item_name, load_npy, read_item

#: What the IMU loader accepts for one item.
ImuInput: TypeAlias = MediaSource | np.ndarray | torch.Tensor

#: Channels (accelerometer and gyroscope, x/y/z each) and samples per ImageBind IMU window.
IMU_CHANNELS = 6
IMU_SAMPLES = 2000


def _raw_array(item: ImuInput, name: str) -> np.ndarray | torch.Tensor:
    """The array behind ``item``: itself, or the ``.npy`` content of a path, blob or file."""
    if isinstance(item, np.ndarray | torch.Tensor):
        return item
    accepted = "a .npy path, bytes, a binary file object, a numpy array or a tensor"
    return load_npy(read_item(item, name, accepted), name)


def _window(array: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """A finite (6, 2000) float32 tensor; a (2000, 6) samples-first window is transposed."""
    try:
        tensor = torch.as_tensor(array).detach().cpu()
    except (TypeError, RuntimeError) as exc:
        raise MediaError(name, f"IMU data is not numeric: {exc}", "pass real numbers") from exc
    if tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise MediaError(name, f"IMU data has dtype {tensor.dtype}", "pass real numbers")
    if tensor.shape == (IMU_SAMPLES, IMU_CHANNELS):
        tensor = tensor.T
    if tensor.shape != (IMU_CHANNELS, IMU_SAMPLES):
        raise MediaError(
            name,
            f"IMU data has shape {tuple(tensor.shape)}",
            f"expected ({IMU_CHANNELS}, {IMU_SAMPLES}): accelerometer and gyroscope x/y/z "
            f"channels by {IMU_SAMPLES} samples, or its transpose",
        )
    tensor = tensor.to(torch.float32)
    if not torch.isfinite(tensor).all():
        raise MediaError(name, "IMU data contains NaN or infinity", "interpolate or drop gaps")
    return tensor.contiguous()


def load_and_transform_imu_data(
    imu_data: Sequence[ImuInput], device: torch.device | str | None = None
) -> torch.Tensor:
    """IMU windows as ImageBind's IMU input: a (B, 6, 2000) float32 tensor on ``device``.

    Items are ``.npy`` files (path, bytes or binary file object; never unpickled), numpy
    arrays or tensors of shape (6, 2000), channels first. (2000, 6) windows are transposed
    because that samples-first layout is the usual CSV/sensor-log order; no other shape is
    guessed at. Values are passed through unchanged (see the module notes on units).
    """
    check_batch(imu_data, "imu_data")
    windows = []
    for index, item in enumerate(imu_data):
        name = item_name(item, index)
        windows.append(_window(_raw_array(item, name), name))
    return torch.stack(windows).to(device)
