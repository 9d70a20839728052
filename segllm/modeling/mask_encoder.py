"""SegLLM's mask encoder: an earlier mask comes back into the LLM as two tokens.

- crop token: the masked crop of the image through the vision tower's CLS token and the V2L
  projector (the tower and projector are LLaVA's own, passed in, so their weights are shared);
- box token: the mask's normalised box (x0, y0, x1, y1) through Linear(4, H).

Token dropout, as SegLLM's code does it (``process_extra_replacement_data``): in training each
crop token and each box token is kept with probability 1 - p, drawn independently per token,
and a dropped token is zero (no rescaling of the kept ones); outside training both tokens are
multiplied by ``inference_scale`` (SegLLM: 0.5, the training tokens' expected value). One
difference, on purpose: SegLLM's zeroing line writes into a copy, so its tokens are *added* to
the placeholder's embedding and a dropped token leaves that embedding; ours replace the slot,
and a dropped token is the zero vector.

``token_dropout=1.0`` with ``inference_scale=0.0`` zeroes both tokens always: the retrained
"mask-encoder tokens zeroed" ablation (the slots stay, so the sequence is unchanged).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class MaskEncoder(nn.Module):
    """Args: hidden: the LLM's hidden size H; token_dropout, inference_scale: see above."""

    def __init__(self, hidden: int, token_dropout: float = 0.0, inference_scale: float = 1.0):
        super().__init__()
        if not 0.0 <= token_dropout <= 1.0:
            raise ValueError(f"mask_encoder.token_dropout must be in [0, 1], got {token_dropout}")
        self.box_proj = nn.Linear(4, hidden)
        self.token_dropout = token_dropout
        self.inference_scale = inference_scale

    def forward(self, crop_pixels: torch.Tensor, boxes: torch.Tensor,
                encode_cls: Callable[[torch.Tensor], torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """[R, 3, S, S] crops and [R, 4] boxes -> crop tokens [R, H] and box tokens [R, H]."""
        crop = encode_cls(crop_pixels)
        box = self.box_proj(boxes.to(self.box_proj.weight.dtype))
        if self.training and self.token_dropout > 0:
            keep = torch.rand((2, crop.shape[0], 1), device=crop.device) >= self.token_dropout
            crop, box = crop * keep[0].to(crop.dtype), box * keep[1].to(box.dtype)
        elif not self.training and self.inference_scale != 1.0:
            crop, box = crop * self.inference_scale, box * self.inference_scale
        return crop, box
