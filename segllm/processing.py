"""Image preprocessing for the vision tower and the mask encoder, in torch.

- CLIP (vision tower): LLaVA-1.5's "pad" aspect mode: pad to a square with the mean colour,
  resize to the tower's size, normalise with CLIP's mean and std.
- The mask decoder preprocesses its own input (``MaskDecoder.preprocess`` in
  ``segllm.modeling.decoders``), with :func:`resize_image` here.
- Mask encoder: a masked crop (pixels outside the mask set to the mean colour, cropped to the
  mask's box, then the CLIP path) and the box normalised to [0, 1] as (x0, y0, x1, y1).

Images are uint8 tensors of shape [3, H, W]; ``to_image_tensor`` converts PIL or numpy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_image_tensor(image) -> torch.Tensor:
    """PIL image, HxWx3 uint8 array or [3, H, W] uint8 tensor -> [3, H, W] uint8 tensor (RGB)."""
    if isinstance(image, torch.Tensor):
        tensor = image
    else:
        if hasattr(image, "convert"):  # PIL
            image = np.asarray(image.convert("RGB"))
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 RGB image, got shape {array.shape}")
        if not array.flags.writeable:  # PIL hands out read-only arrays; torch wants to own one
            array = array.copy()
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    if tensor.ndim != 3 or tensor.shape[0] != 3 or tensor.dtype != torch.uint8:
        raise ValueError(f"expected a [3, H, W] uint8 image, got {tuple(tensor.shape)} "
                         f"{tensor.dtype}")
    return tensor


def _mean_color(device) -> torch.Tensor:
    return torch.tensor(CLIP_MEAN, device=device).view(3, 1, 1) * 255.0


def pad_to_square(image: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Centre ``image`` [3, H, W] float on a square canvas filled with ``fill`` [3, 1, 1]."""
    _, h, w = image.shape
    side = max(h, w)
    canvas = fill.expand(3, side, side).clone()
    top, left = (side - h) // 2, (side - w) // 2
    canvas[:, top:top + h, left:left + w] = image
    return canvas


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[3, H, W] float -> [3, h, w] float (bilinear, antialiased when shrinking)."""
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                         antialias=True)[0]


def clip_normalize(image: torch.Tensor) -> torch.Tensor:
    """[3, S, S] float in 0-255 -> normalised CLIP input."""
    mean = torch.tensor(CLIP_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, device=image.device).view(3, 1, 1)
    return (image / 255.0 - mean) / std


def preprocess_clip(image: torch.Tensor, size: int, aspect: str = "pad") -> torch.Tensor:
    """uint8 [3, H, W] -> [3, size, size] float, normalised. ``aspect="pad"`` (LLaVA-1.5):
    pad to a square with the mean colour, resize. ``"crop"`` (CLIPImageProcessor, as LISA
    uses it): resize the short side to ``size`` (bicubic), take the centre square."""
    if aspect == "crop":
        return clip_normalize(center_crop(resize_short_side(image, size), size))
    if aspect != "pad":
        raise ValueError(f"aspect must be 'pad' or 'crop', got {aspect!r}")
    square = pad_to_square(image.float(), _mean_color(image.device))
    return clip_normalize(resize_image(square, (size, size)))


def resize_short_side(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [3, H, W] -> float [3, h, w] in 0-255 with min(h, w) = ``size`` (the long side
    truncated, as transformers' image processors compute it), bicubic, rounded like a uint8
    image."""
    _, h, w = image.shape
    short, long = min(h, w), max(h, w)
    new_long = int(size * long / short)
    target = (size, new_long) if h <= w else (new_long, size)
    resized = F.interpolate(image[None].float(), size=target, mode="bicubic",
                            align_corners=False, antialias=True)[0]
    return resized.clamp(0, 255).round()


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size`` x ``size`` of [3, H, W] (top-left rounded down)."""
    _, h, w = image.shape
    top, left = (h - size) // 2, (w - size) // 2
    return image[:, top:top + size, left:left + size]


def mask_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """Tight box (x0, y0, x1, y1), exclusive ends, of a non-empty [H, W] boolean mask."""
    from torchvision.ops import masks_to_boxes  # local: torchvision is slow to import

    if not mask.any():
        raise ValueError("cannot take the box of an empty mask")
    x0, y0, x1, y1 = (int(v) for v in masks_to_boxes(mask[None])[0])  # inclusive ends
    return x0, y0, x1 + 1, y1 + 1


def normalized_box(mask: torch.Tensor) -> torch.Tensor:
    """The mask's box as (x0, y0, x1, y1) divided by the image width and height: [4] float."""
    x0, y0, x1, y1 = mask_box(mask)
    h, w = mask.shape
    return torch.tensor([x0 / w, y0 / h, x1 / w, y1 / h], dtype=torch.float32)


def masked_crop(image: torch.Tensor, mask: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP input of the masked region: [3, size, size]. ``mask`` is [H, W] bool, non-empty."""
    if mask.shape != image.shape[1:]:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not match the image "
                         f"{tuple(image.shape[1:])}")
    x0, y0, x1, y1 = mask_box(mask)
    fill = _mean_color(image.device)
    kept = torch.where(mask[None].to(image.device), image.float(), fill)
    crop = kept[:, y0:y1, x0:x1]
    square = pad_to_square(crop, fill)
    return clip_normalize(resize_image(square, (size, size)))
