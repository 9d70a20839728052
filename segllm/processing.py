"""Image preprocessing for the two image paths and the mask encoder, in torch.

- CLIP (vision tower): LLaVA-1.5's "pad" aspect mode: pad to a square with the mean colour,
  resize to the tower's size, normalise with CLIP's mean and std.
- SAM (mask decoder): resize the longest side to SAM's size, normalise, pad bottom-right
  (segment_anything's ResizeLongestSide + Sam.preprocess); the resized size is kept so
  masks can be mapped back to the original size.
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
SAM_MEAN = (123.675, 116.28, 103.53)  # 0-255 scale, as segment_anything
SAM_STD = (58.395, 57.12, 57.375)


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


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                         antialias=True)[0]


def clip_normalize(image: torch.Tensor) -> torch.Tensor:
    """[3, S, S] float in 0-255 -> normalised CLIP input."""
    mean = torch.tensor(CLIP_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, device=image.device).view(3, 1, 1)
    return (image / 255.0 - mean) / std


def preprocess_clip(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [3, H, W] -> [3, size, size] float: pad to square, resize, normalise."""
    square = pad_to_square(image.float(), _mean_color(image.device))
    return clip_normalize(_resize(square, (size, size)))


def sam_resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Size after resizing the longest side to ``size`` (segment_anything's rounding)."""
    scale = size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def preprocess_sam(image: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 [3, H, W] -> ([3, size, size] normalised and padded, resized (h, w))."""
    h, w = sam_resized_size(image.shape[1], image.shape[2], size)
    resized = _resize(image.float(), (h, w))
    mean = torch.tensor(SAM_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(SAM_STD, device=image.device).view(3, 1, 1)
    normed = (resized - mean) / std
    return F.pad(normed, (0, size - w, 0, size - h)), (h, w)


def mask_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """Tight box (x0, y0, x1, y1), exclusive ends, of a non-empty [H, W] boolean mask."""
    ys = torch.nonzero(mask.any(dim=1)).flatten()
    xs = torch.nonzero(mask.any(dim=0)).flatten()
    if len(ys) == 0:
        raise ValueError("cannot take the box of an empty mask")
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


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
    return clip_normalize(_resize(square, (size, size)))
