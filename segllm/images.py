"""The one image loader: training, evaluation, chat and the demo all read images here.

The orientation rule is explicit at every call:

- ``"stored"``: the pixel array as stored in the file. Data sets (COCO among them) annotate
  this array and give its size, so training and evaluation use it, whatever EXIF says.
- ``"exif"``: the image as a viewer shows it (EXIF orientation applied). A user's photo in chat
  or the demo is shown this way, and its masks come back in this orientation.

The checks are the same for both: the file and pixel limits before decoding (with PIL's
decompression-bomb guard turned into an error), then any PIL mode to RGB the way a viewer
shows it (16-bit scaled, not clipped; alpha on white; palettes expanded; CMYK converted).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

__all__ = ["ImageError", "ImageLimits", "InputError", "Orientation", "load_image"]

Orientation = Literal["stored", "exif"]
ORIENTATIONS: tuple[str, ...] = ("stored", "exif")


class InputError(ValueError):
    """A question, reference or image the session refuses; the session is left unchanged."""


class ImageError(InputError):
    """An image that cannot be used: not an image, too large, or of a shape the model can't take."""


@dataclass(frozen=True)
class ImageLimits:
    """What ``load_image`` accepts.

    ``max_pixels`` is checked on the header, before any pixel is decoded (PIL's decompression
    bomb guard is kept as a second line). Images larger than ``max_model_side`` are scaled down
    for the model only (the CLIP square and the decoder's input are small anyway); masks are
    still returned at the original size.
    """

    max_pixels: int = 40_000_000
    max_file_bytes: int = 50 * 1024 * 1024
    max_model_side: int = 4096


# Where PIL finds an orientation (EXIF, PNG text, XMP). The loaded image is final in the
# orientation its rule named, so a later load of it with "exif" cannot rotate it again.
_ORIENTATION_KEYS = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")
_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def load_image(source, *, orientation: Orientation, limits: ImageLimits = ImageLimits()):
    """Any image input -> an RGB ``PIL.Image`` in the orientation the rule names.

    ``source``: a path, ``bytes``, a binary file object, a PIL image, an ``HxW`` / ``HxWx3`` /
    ``HxWx4`` array or a ``[3, H, W]`` uint8 tensor. ``orientation``: ``"stored"`` (the file's
    pixel array: data sets) or ``"exif"`` (as a viewer shows it: a user's photo). Alpha is
    composited on white; 16-bit images are scaled to 8 bits (not clipped, as PIL's own
    conversion does); palettes expand. Raises ``ImageError`` with a message for anything that
    is not a usable image.
    """
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {list(ORIENTATIONS)}, got {orientation!r}")
    image = _open_image(source, limits)
    _check_pixels(image.size, limits)
    try:
        image.load()
        if orientation == "exif":
            from PIL import ImageOps

            image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        raise ImageError(f"the image could not be decoded ({err})") from err
    rgb = _to_rgb(image)  # a new image: its metadata can be changed
    for key in _ORIENTATION_KEYS:  # nothing left to rotate it later (exif_transpose drops it too)
        rgb.info.pop(key, None)
    return rgb


def _open_image(source, limits: ImageLimits):
    """Open lazily (header only) with PIL's decompression-bomb guard turned into errors."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Image.Image):
        return source
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu().permute(1, 2, 0).numpy() if source.ndim == 3 else source.numpy()
    if isinstance(source, np.ndarray):
        return _image_from_array(source)
    name = "the upload"
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{path}: no such file")
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise ImageError(f"{path.name}: the file is {size / 2**20:.1f} MiB; the limit is "
                             f"{limits.max_file_bytes / 2**20:.0f} MiB")
        name, source = path.name, path.read_bytes()
    elif hasattr(source, "read"):
        source = source.read(limits.max_file_bytes + 1)
    if not isinstance(source, (bytes, bytearray)):
        raise ImageError(f"cannot read an image from a {type(source).__name__}")
    if len(source) > limits.max_file_bytes:
        raise ImageError(f"the file is larger than the {limits.max_file_bytes / 2**20:.0f} MiB limit")
    if not source:
        raise ImageError(f"{name} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(source))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({err})") from err
    except UnidentifiedImageError as err:
        raise ImageError(f"{name} is not an image PIL can read (PNG, JPEG, WebP, ...)") from err
    except OSError as err:
        raise ImageError(f"{name} could not be opened as an image ({err})") from err


def _image_from_array(array: np.ndarray):
    from PIL import Image

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageError(f"expected an HxW, HxWx3 or HxWx4 array, got shape {array.shape}")
    if array.dtype == np.uint16:
        array = _scale_16_to_8(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        raise ImageError(f"expected a uint8 (or uint16) array, got {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array))


def _scale_16_to_8(array: np.ndarray) -> np.ndarray:
    """Full 16-bit range to 8 bits (65535 -> 255), rounding."""
    return ((array.astype(np.float64) / 257.0).round().clip(0, 255)).astype(np.uint8)


def _check_pixels(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"the image is empty ({width}x{height} pixels)")
    if width * height > limits.max_pixels:
        raise ImageError(f"the image is {width}x{height} = {width * height / 1e6:.0f} M pixels; "
                         f"the limit is {limits.max_pixels / 1e6:.0f} M pixels")


def _to_rgb(image):
    """Convert any PIL mode to RGB the way a viewer would show it."""
    from PIL import Image

    if image.mode in _HIGH_BIT_MODES:
        array = np.asarray(image)
        if image.mode == "I" and array.max(initial=0) <= 255 and array.min(initial=0) >= 0:
            array = array.astype(np.uint8)  # 8-bit data stored in a 32-bit mode
        else:
            array = _scale_16_to_8(array.clip(0, 65535))
        image = Image.fromarray(array)
    elif image.mode == "F":
        image = Image.fromarray(np.asarray(image).clip(0, 255).round().astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA") if image.mode != "La" else image.convert("LA").convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageError(f"images in mode {image.mode!r} are not supported ({err})") from err
