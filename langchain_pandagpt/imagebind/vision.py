"""Image, thermal and depth loaders producing ImageBind's 224 x 224 input batches.

The image path reproduces the official torchvision pipeline exactly with Pillow and torch
alone (torchvision's PIL path delegates resize and crop to Pillow): short side to 224 with
Pillow bicubic, centre crop with round-half-even offsets, scale to [0, 1], CLIP normalisation.
Thermal follows the PandaGPT/community loader; depth has no official loader, so its
convention is ours and is documented on :func:`load_and_transform_depth_data`.

Every item may be a path, bytes, a binary file object, a PIL image or a numpy array. Sizes
are checked before any pixel is decoded (Pillow reads them from the header): the width and
height, the area, and the size the image would have after its short side is scaled to 224,
so a small file claiming a huge or extremely thin canvas (a decompression bomb) is refused
cheaply; ``.npy`` headers are checked against the bytes that follow before any array is
allocated. Any decoding failure becomes a :class:`~langchain_pandagpt.errors.MediaError`
naming the input.
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TypeAlias

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.imagebind.sources import MediaSource, describe_source, read_source_bytes

#: What the image, thermal and depth loaders accept for one item.
ImageInput: TypeAlias = MediaSource | Image.Image | np.ndarray

#: Refuse larger images by default: Pillow's own bomb threshold (about 89.5 megapixels).
MAX_IMAGE_PIXELS = 89_478_485
#: Side of ImageBind's square image inputs.
IMAGE_SIZE = 224
#: Refuse images with a longer side (JPEG and WebP stop at 65,535 and 16,383; PNG claims go
#: up to 2**31 - 1).
MAX_IMAGE_SIDE = 1 << 16
#: Refuse images that would have more pixels once their short side is scaled to 224 (an
#: aspect ratio above 64:1): a 100 x 890,000 PNG is under the area limit, but resized it
#: would be 224 x 1,993,600 pixels (1.3 GB).
MAX_RESIZED_PIXELS = IMAGE_SIZE * IMAGE_SIZE * 64
#: Per-channel RGB normalisation of CLIP, which ImageBind's vision encoder inherits.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Depth-to-disparity defaults: Kinect v1 stereo baseline (m) and focal length (px), as in
#: the SUN RGB-D conversion the ImageBind/Omnivore authors published; depth clipped to
#: [MIN_DEPTH_M, MAX_DEPTH_M] metres first.
KINECT_BASELINE_M = 0.075
KINECT_FOCAL_PX = 518.857901
MIN_DEPTH_M = 0.01
MAX_DEPTH_M = 50.0

_NPY_MAGIC = b"\x93NUMPY"
_MILLIMETRE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
# Pillow plugins signal corrupt data with a grab-bag of exception types.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error)
_ACCEPTED = "a path, bytes, a binary file object, a PIL image or a numpy array"


def item_name(item: object, index: int) -> str:
    """Name of a batch item for error messages: its file name, else its type and batch index."""
    name = describe_source(item)
    return f"{name} at index {index}" if name.startswith("<") else name


def check_batch(items: Sequence[object], argument: str) -> None:
    """Reject an empty batch, and a single path or blob passed where a list is expected."""
    if isinstance(items, str | bytes | bytearray | os.PathLike | np.ndarray | torch.Tensor):
        raise TypeError(f"{argument} must be a list of inputs; wrap a single input: [{argument}]")
    if len(items) == 0:
        raise ValueError(f"{argument} is empty: pass at least one input")


@contextmanager
def _decoding(name: str) -> Iterator[None]:
    """Turn Pillow's decoding failures, bomb errors included, into MediaError naming ``name``.

    Pillow's bomb *warning* is silenced because the caller enforces its own pixel limit.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            yield
        except MediaError:
            raise
        except UnidentifiedImageError as exc:
            raise MediaError(
                name, "is not an image format Pillow can read", "pass a JPEG, PNG, WebP... file"
            ) from exc
        except Image.DecompressionBombError as exc:
            raise MediaError(name, f"refused as a decompression bomb: {exc}") from exc
        except _DECODE_ERRORS as exc:
            raise MediaError(
                name, f"cannot be decoded as an image: {exc}", "pass a valid image file"
            ) from exc


def read_item(item: MediaSource, name: str, accepted: str) -> bytes:
    """All bytes of a path, blob or file object, with errors naming the item as ``name``.

    ``accepted`` lists the input kinds the calling loader takes, for the unsupported-type hint.
    """
    if not isinstance(item, str | bytes | bytearray | memoryview | os.PathLike) and not hasattr(
        item, "read"
    ):
        raise MediaError(name, f"unsupported input type {type(item).__name__}", f"pass {accepted}")
    try:
        return read_source_bytes(item)
    except MediaError as exc:
        if exc.source == name:
            raise
        raise MediaError(name, exc.problem, exc.fix) from None


def _parse(data: bytes, name: str) -> Image.Image:
    """A lazily decoded PIL image over ``data``: only the header is parsed here."""
    with _decoding(name):
        return Image.open(io.BytesIO(data))


def _array_to_image(array: np.ndarray, name: str, max_pixels: int) -> Image.Image:
    """A PIL image over a uint8 array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)."""
    if array.dtype != np.uint8 or not (
        array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))
    ):
        raise MediaError(
            name,
            f"array of shape {array.shape} and dtype {array.dtype} is not an image",
            "pass uint8 (H, W), (H, W, 3) RGB or (H, W, 4) RGBA",
        )
    check_image_size(array.shape[1], array.shape[0], name, max_pixels)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(array))


def _open(item: ImageInput, name: str, max_pixels: int) -> Image.Image:
    """A possibly not yet decoded PIL image for any accepted item."""
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, np.ndarray):
        return _array_to_image(item, name, max_pixels)
    return _parse(read_item(item, name, _ACCEPTED), name)


def check_image_size(
    width: int,
    height: int,
    name: str,
    max_pixels: int = MAX_IMAGE_PIXELS,
    short_side: int = IMAGE_SIZE,
) -> None:
    """Refuse a canvas before it is decoded: empty, a side over :data:`MAX_IMAGE_SIDE`, an
    area over ``max_pixels``, or more than :data:`MAX_RESIZED_PIXELS` once its short side is
    scaled to ``short_side`` (the resize every loader does next)."""
    fix = "downscale it, or raise max_pixels if the file is trusted"
    if width < 1 or height < 1:
        raise MediaError(name, f"image is {width}x{height}: it has no pixels")
    if max(width, height) > MAX_IMAGE_SIDE:
        raise MediaError(
            name, f"image is {width}x{height}, a side over the limit of {MAX_IMAGE_SIDE}", fix
        )
    if width * height > max_pixels:
        raise MediaError(
            name,
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}",
            fix,
        )
    short, long = min(width, height), max(width, height)
    resized = short_side * (short_side * long // short)
    if short != short_side and resized > MAX_RESIZED_PIXELS:
        raise MediaError(
            name,
            f"image is {width}x{height}: scaled to a short side of {short_side} it would have "
            f"{resized} pixels, over the limit of {MAX_RESIZED_PIXELS} (aspect ratio over "
            f"{MAX_RESIZED_PIXELS // short_side**2}:1)",
            "crop it to a less elongated shape",
        )


def _check_pixels(image: Image.Image, name: str, max_pixels: int) -> None:
    """Refuse images too large to decode and resize, before their pixel data is decoded."""
    check_image_size(image.width, image.height, name, max_pixels)


def _load_image(item: ImageInput, index: int, mode: str, max_pixels: int) -> Image.Image:
    """Decode ``item`` fully and convert it to ``mode`` (alpha is dropped, not composited)."""
    name = item_name(item, index)
    image = _open(item, name, max_pixels)
    _check_pixels(image, name, max_pixels)
    with _decoding(name):
        return image.convert(mode)


def _resize_short_side(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """Scale so the short side is ``size``; the long side is truncated, as torchvision does."""
    width, height = image.size
    if min(width, height) == size:
        return image
    if width <= height:
        return image.resize((size, int(size * height / width)), resample)
    return image.resize((int(size * width / height), size), resample)


def _crop_offset(length: int, size: int) -> int:
    """torchvision's CenterCrop offset: round-half-even, or a negative (zero-padding) offset
    that puts the extra padding pixel at the end when the side is shorter than ``size``."""
    if length < size:
        return -((size - length) // 2)
    return round((length - size) / 2)


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    """Central ``size`` x ``size`` window; Pillow fills any area outside the image with zeros."""
    left = _crop_offset(image.width, size)
    top = _crop_offset(image.height, size)
    return image.crop((left, top, left + size, top + size))


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """(C, H, W) float32 tensor of an image; 8-bit data is scaled to [0, 1] like ToTensor."""
    array = np.array(image)
    tensor = torch.from_numpy(array if array.ndim == 3 else array[:, :, None]).permute(2, 0, 1)
    if array.dtype == np.uint8:
        return tensor.to(torch.float32) / 255
    return tensor.to(torch.float32)


def _square(image: Image.Image, resample: Image.Resampling) -> torch.Tensor:
    """Resize and centre-crop to IMAGE_SIZE, then convert to a tensor."""
    image = _center_crop(_resize_short_side(image, IMAGE_SIZE, resample), IMAGE_SIZE)
    return _to_tensor(image)


def load_and_transform_vision_data(
    image_paths: Sequence[ImageInput],
    device: torch.device | str | None = None,
    *,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> torch.Tensor:
    """Images as ImageBind's vision input: a (B, 3, 224, 224) float32 tensor on ``device``.

    Official pipeline: RGB conversion (alpha dropped), short side to 224 with Pillow bicubic,
    centre crop, scaling to [0, 1], CLIP mean/std normalisation. Arrays must be uint8 HWC RGB
    (or HW grayscale). Images over ``max_pixels`` are refused before decoding.
    """
    check_batch(image_paths, "image_paths")
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    batch = [
        (_square(_load_image(item, i, "RGB", max_pixels), Image.Resampling.BICUBIC) - mean) / std
        for i, item in enumerate(image_paths)
    ]
    return torch.stack(batch).to(device)


def load_and_transform_thermal_data(
    thermal_paths: Sequence[ImageInput],
    device: torch.device | str | None = None,
    *,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> torch.Tensor:
    """Thermal images as a (B, 1, 224, 224) float32 tensor in [0, 1] on ``device``.

    No official loader exists; this is PandaGPT's: grayscale conversion, the image resize and
    crop, and no normalisation (users report better LLVIP accuracy without it).
    """
    check_batch(thermal_paths, "thermal_paths")
    batch = [
        _square(_load_image(item, i, "L", max_pixels), Image.Resampling.BICUBIC)
        for i, item in enumerate(thermal_paths)
    ]
    return torch.stack(batch).to(device)


def load_npy(data: bytes, name: str) -> np.ndarray:
    """The array in ``.npy`` bytes, never unpickling objects (untrusted files could run code).

    The header is read first: bytes that are not a ``.npy`` file, object arrays and headers
    claiming more data than follows (a 100-byte file "holding" 160 GB) are refused before
    NumPy allocates anything, so an array never costs more memory than its file.
    """
    fix = "save one numeric array with np.save"
    if not data.startswith(_NPY_MAGIC):
        kind = "a .npz archive" if data.startswith(b"PK") else "not a .npy array"
        raise MediaError(name, f"is {kind} (no NumPy .npy signature)", fix)
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read_header(stream)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise MediaError(name, f"is not a readable .npy array: {exc}", fix) from exc
    if dtype.hasobject:
        raise MediaError(name, "holds Python objects, which are never unpickled", fix)
    claimed = math.prod(shape) * dtype.itemsize
    available = len(data) - stream.tell()
    if claimed > available:
        raise MediaError(
            name,
            f".npy header claims shape {shape} of {dtype} ({claimed} bytes) but only "
            f"{available} bytes follow",
            "the file is truncated or corrupt",
        )
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise MediaError(name, f"is not a readable .npy array: {exc}", fix) from exc
    return np.asarray(array)


def _depth_image_array(image: Image.Image, name: str, max_pixels: int) -> np.ndarray:
    """Pixel data of a 16/32-bit integer (millimetres) or float (metres) depth image."""
    _check_pixels(image, name, max_pixels)
    if image.mode not in _MILLIMETRE_MODES and image.mode != "F":
        raise MediaError(
            name,
            f"depth image has mode {image.mode}",
            "pass a 16-bit PNG in millimetres or a float32 array in metres",
        )
    with _decoding(name):
        return np.asarray(image)


def _depth_source_array(item: ImageInput, name: str, max_pixels: int) -> np.ndarray:
    """Raw depth array of any accepted input: an array, a PIL image, ``.npy`` or image bytes."""
    if isinstance(item, np.ndarray):
        return item
    if isinstance(item, Image.Image):
        return _depth_image_array(item, name, max_pixels)
    data = read_item(item, name, _ACCEPTED)
    if data.startswith(_NPY_MAGIC):
        return load_npy(data, name)
    return _depth_image_array(_parse(data, name), name, max_pixels)


def _depth_in_metres(array: np.ndarray, name: str) -> np.ndarray:
    """(H, W) float32 metres: integer data is millimetres, floating data is already metres."""
    if array.ndim != 2 or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise MediaError(
            name,
            f"depth array of shape {array.shape} and dtype {array.dtype} is not a depth map",
            "pass (H, W) integer millimetres or floating-point metres",
        )
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32) / 1000
    if not np.isfinite(array).all():
        raise MediaError(name, "depth map contains NaN or infinity", "mark missing depth with 0")
    return array.astype(np.float32)


def _disparity(
    depth_m: np.ndarray, baseline: float, focal_length: float, depth_range: tuple[float, float]
) -> np.ndarray:
    """Stereo disparity in pixels, ``baseline * focal / depth``, with depth clipped to range."""
    return (baseline * focal_length / np.clip(depth_m, *depth_range)).astype(np.float32)


def load_and_transform_depth_data(
    depth_paths: Sequence[ImageInput],
    device: torch.device | str | None = None,
    *,
    baseline: float = KINECT_BASELINE_M,
    focal_length: float = KINECT_FOCAL_PX,
    min_depth: float = MIN_DEPTH_M,
    max_depth: float = MAX_DEPTH_M,
    mean: float | None = None,
    std: float | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> torch.Tensor:
    """Depth maps as ImageBind disparity input: a (B, 1, 224, 224) float32 tensor on ``device``.

    Upstream ships no depth loader; ImageBind was trained on SUN RGB-D *disparity*, and this
    is our convention, following the conversion its authors published:

    - Input units: integer data (16-bit PNG, uint16 arrays, integer ``.npy``) is millimetres;
      floating data (float ``.npy``, float32 TIFF/PIL mode "F", float arrays) is metres.
      Arrays are (H, W). Raw SUN RGB-D PNGs need their 3-bit circular shift undone first:
      ``(d >> 3) | (d << 13)`` on the uint16 array.
    - Disparity = ``baseline * focal_length / depth`` with depth clipped to
      [``min_depth``, ``max_depth``] metres. Defaults are Kinect v1 (0.075 m, 518.86 px); use
      ``baseline=0.095`` for RealSense/Xtion. Pixels without a reading (depth 0) are clipped
      to ``min_depth`` like any other, so they get the largest disparity.
    - The map is resized (short side 224, Pillow bilinear on the float map: torchvision's
      tensor default, and it cannot overshoot at depth edges as bicubic does) and centre
      cropped like images.
    - ``mean``/``std`` standardise the result when given. They default to None (no
      normalisation) because upstream never published depth constants.
    """
    check_batch(depth_paths, "depth_paths")
    if not 0 < min_depth < max_depth:
        raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth} and {max_depth}")
    batch = []
    for i, item in enumerate(depth_paths):
        name = item_name(item, i)
        raw = _depth_source_array(item, name, max_pixels)
        if raw.ndim == 2:
            check_image_size(raw.shape[1], raw.shape[0], name, max_pixels)
        depth_m = _depth_in_metres(raw, name)
        disparity = _disparity(depth_m, baseline, focal_length, (min_depth, max_depth))
        batch.append(_square(Image.fromarray(disparity), Image.Resampling.BILINEAR))
    tensor = torch.stack(batch)
    if mean is not None:
        tensor = tensor - mean
    if std is not None:
        tensor = tensor / std
    return tensor.to(device)
