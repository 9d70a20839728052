"""SegLLM's mask encoder: an earlier mask comes back into the LLM as two tokens.

- crop token: the masked crop of the image through the vision tower's CLS token and the V2L
  projector (the tower and projector are LLaVA's own, passed in, so their weights are shared);
- box token: the mask's normalised box (x0, y0, x1, y1) through Linear(4, H).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class MaskEncoder(nn.Module):
    """Args: hidden: the LLM's hidden size H."""

    def __init__(self, hidden: int):
        super().__init__()
        self.box_proj = nn.Linear(4, hidden)

    def forward(self, crop_pixels: torch.Tensor, boxes: torch.Tensor,
                encode_cls: Callable[[torch.Tensor], torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """[R, 3, S, S] crops and [R, 4] boxes -> crop tokens [R, H] and box tokens [R, H]."""
        crop = encode_cls(crop_pixels)
        box = self.box_proj(boxes.to(self.box_proj.weight.dtype))
        return crop, box
