"""Multi-scale deformable attention (Deformable-DETR), in pure PyTorch with ``grid_sample``.

Each query attends to a few sampled points per head and feature level, around its reference
point, and sums their bilinearly interpolated values with learned weights. Semantics as
Deformable-DETR's PyTorch reference (``ms_deform_attn_core_pytorch``): sampling locations are
normalised to [0, 1] per level, pixel centres sit at (i + 0.5) / size, and points outside a map
read zeros (``grid_sample(..., align_corners=False, padding_mode="zeros")``). No compiled op:
slower than the CUDA kernel but identical in value, and it runs on CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def ms_deform_attn(value: torch.Tensor, spatial_shapes: list[tuple[int, int]],
                   sampling_locations: torch.Tensor, attention_weights: torch.Tensor
                   ) -> torch.Tensor:
    """The attention core.

    Args:
        value: [B, S, M, D] values of every level's positions, flattened level after level
            (S = sum of h * w), M heads of D channels.
        spatial_shapes: (h, w) of each of the L levels.
        sampling_locations: [B, Q, M, L, P, 2] (x, y) in [0, 1] of each level.
        attention_weights: [B, Q, M, L, P] (softmax-normalised over L * P by the caller).

    Returns:
        [B, Q, M * D].
    """
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    sizes = [h * w for h, w in spatial_shapes]
    grids = 2.0 * sampling_locations - 1.0  # grid_sample reads [-1, 1]
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        # [B, h*w, M, D] -> [B*M, D, h, w]
        level_value = value.split(sizes, dim=1)[level].permute(0, 2, 3, 1).reshape(
            batch * heads, dim, h, w)
        # [B, Q, M, P, 2] -> [B*M, Q, P, 2]
        grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        sampled.append(F.grid_sample(level_value, grid.to(level_value.dtype), mode="bilinear",
                                     padding_mode="zeros", align_corners=False))
    # [B*M, D, Q, L*P] weighed by [B*M, 1, Q, L*P]
    stacked = torch.stack(sampled, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries,
                                                        levels * points)
    out = (stacked * weights.to(stacked.dtype)).sum(-1)  # [B*M, D, Q]
    return out.view(batch, heads * dim, queries).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Deformable attention over L feature levels (Deformable-DETR's ``MSDeformAttn`` layout).

    Args:
        dim: model width.
        levels: feature levels L.
        heads: attention heads M.
        points: sampled points P per head and level.
    """

    def __init__(self, dim: int = 256, levels: int = 4, heads: int = 8, points: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"MSDeformAttn: dim {dim} is not divisible by heads {heads}")
        self.dim, self.levels, self.heads, self.points = dim, levels, heads, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable-DETR's start: each head samples along its own direction, point k at k
        pixels from the reference; uniform attention weights."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        direction = torch.stack([angles.cos(), angles.sin()], -1)
        direction = direction / direction.abs().max(-1, keepdim=True).values
        grid = direction.view(self.heads, 1, 1, 2).repeat(1, self.levels, self.points, 1)
        grid = grid * torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value: torch.Tensor,
                spatial_shapes: list[tuple[int, int]]) -> torch.Tensor:
        """
        Args:
            query: [B, Q, dim] (with its positional embedding added).
            reference_points: [B, Q, L, 2] points (x, y) or [B, Q, L, 4] boxes (cx, cy, w, h),
                in [0, 1]. With boxes, offsets are in units of half the box size / P.
            value: [B, S, dim] the flattened levels.
            spatial_shapes: (h, w) of each level.

        Returns:
            [B, Q, dim].
        """
        batch, queries, _ = query.shape
        m, lv, p = self.heads, self.levels, self.points
        values = self.value_proj(value).view(batch, value.shape[1], m, self.dim // m)
        offsets = self.sampling_offsets(query).view(batch, queries, m, lv, p, 2)
        weights = self.attention_weights(query).view(batch, queries, m, lv * p)
        weights = weights.softmax(-1).view(batch, queries, m, lv, p)
        ref = reference_points[:, :, None, :, None]  # [B, Q, 1, L, 1, 2 or 4]
        if reference_points.shape[-1] == 2:
            # an offset of one unit is one pixel of its level
            normaliser = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=offsets.dtype,
                                      device=offsets.device)
            locations = ref + offsets / normaliser[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = ref[..., :2] + offsets / p * ref[..., 2:] * 0.5
        else:
            raise ValueError("MSDeformAttn: reference_points must end in 2 (points) or 4 "
                             f"(boxes), not {reference_points.shape[-1]}")
        return self.output_proj(ms_deform_attn(values, spatial_shapes, locations, weights))
