"""The pixel decoder (MaskDINO's encoder): deformable self-attention over the multi-scale
backbone features, then an FPN step that brings the finest encoder level down to 1/4 scale
with C2, giving the per-pixel embeddings every query's mask is read from.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .deformable_attention import MSDeformAttn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (detectron2's GN); fewer for tiny widths, keeping at least 4
    channels a group (a 1x1 level would otherwise normalise single values)."""
    return nn.GroupNorm(math.gcd(32, max(1, channels // 4)), channels)


def sine_position_2d(height: int, width: int, dim: int, *, device: torch.device,
                     dtype: torch.dtype, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's normalised sine positional encoding of an h x w grid: [dim, h, w] (y half, then x
    half; sin and cos interleaved)."""
    half = dim // 2
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 * math.pi
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 * math.pi
    freq = temperature ** (2 * (torch.arange(half, device=device) // 2) / half)
    pos_y = ys[:, None] / freq  # [h, half]
    pos_x = xs[:, None] / freq  # [w, half]
    pos_y = torch.stack([pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()], -1).flatten(1)
    pos_x = torch.stack([pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()], -1).flatten(1)
    pos = torch.cat([pos_y[:, None, :].expand(height, width, half),
                     pos_x[None, :, :].expand(height, width, half)], dim=-1)
    return pos.permute(2, 0, 1).to(dtype)


def level_centres(spatial_shapes: list[tuple[int, int]], *, device: torch.device,
                  dtype: torch.dtype) -> torch.Tensor:
    """[S, 2] (x, y) in [0, 1] of every position's centre, level after level."""
    points = []
    for h, w in spatial_shapes:
        ys, xs = torch.meshgrid((torch.arange(h, device=device, dtype=dtype) + 0.5) / h,
                                (torch.arange(w, device=device, dtype=dtype) + 0.5) / w,
                                indexing="ij")
        points.append(torch.stack([xs.flatten(), ys.flatten()], -1))
    return torch.cat(points)


class EncoderLayer(nn.Module):
    """Deformable self-attention + FFN, post-norm (Deformable-DETR's encoder layer)."""

    def __init__(self, dim: int, ffn_dim: int, levels: int, heads: int, points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(dim, levels, heads, points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                spatial_shapes: list[tuple[int, int]]) -> torch.Tensor:
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, spatial_shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class PixelDecoder(nn.Module):
    """Multi-scale deformable encoder + 1/4-scale mask features.

    Args:
        in_channels: channels of res2, res3, res4, res5 (the backbone's ``channels``).
        dim: model width.
        mask_dim: per-pixel embedding width.
        layers: encoder layers.
        ffn_dim, heads, points: encoder layer sizes.
        extra_levels: coarser levels made from res5 by stride-2 convolutions (MaskDINO's
            ``TOTAL_NUM_FEATURE_LEVELS`` beyond the three backbone levels).
    """

    def __init__(self, in_channels: dict[str, int], *, dim: int = 256, mask_dim: int = 256,
                 layers: int = 6, ffn_dim: int = 2048, heads: int = 8, points: int = 4,
                 extra_levels: int = 1):
        super().__init__()
        self.in_features = ("res3", "res4", "res5")  # fine to coarse
        levels = len(self.in_features) + extra_levels
        projections = [
            nn.Sequential(nn.Conv2d(in_channels[name], dim, kernel_size=1), group_norm(dim))
            for name in self.in_features]
        for extra in range(extra_levels):
            source = in_channels["res5"] if extra == 0 else dim
            projections.append(nn.Sequential(
                nn.Conv2d(source, dim, kernel_size=3, stride=2, padding=1), group_norm(dim)))
        self.input_proj = nn.ModuleList(projections)
        self.level_embed = nn.Parameter(torch.empty(levels, dim))
        self.encoder = nn.ModuleList(EncoderLayer(dim, ffn_dim, levels, heads, points)
                                     for _ in range(layers))
        self.lateral_conv = nn.Sequential(nn.Conv2d(in_channels["res2"], dim, 1, bias=False),
                                          group_norm(dim))
        self.output_conv = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False),
                                         group_norm(dim), nn.ReLU())
        self.mask_features = nn.Conv2d(dim, mask_dim, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.level_embed)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)

    def forward(self, features: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, list[tuple[int, int]], torch.Tensor]:
        """Backbone maps -> (memory [B, S, dim] of res3, res4, res5 and the extra levels, level
        after level, their (h, w), mask features [B, mask_dim, H/4, W/4])."""
        srcs, pos, shapes = [], [], []
        x = None
        for level, proj in enumerate(self.input_proj):
            if level < len(self.in_features):
                x = proj(features[self.in_features[level]])
            else:  # the first extra level reads res5 itself, later ones the previous level
                x = proj(features["res5"] if level == len(self.in_features) else x)
            h, w = x.shape[-2:]
            shapes.append((h, w))
            srcs.append(x.flatten(2).transpose(1, 2))
            enc = sine_position_2d(h, w, x.shape[1], device=x.device, dtype=x.dtype)
            pos.append(enc.flatten(1).T[None] + self.level_embed[level].to(x.dtype))
        src = torch.cat(srcs, 1)
        pos_all = torch.cat(pos, 1)
        centres = level_centres(shapes, device=src.device, dtype=src.dtype)
        reference = centres[None, :, None, :].expand(src.shape[0], -1, len(shapes), -1)
        for layer in self.encoder:
            src = layer(src, pos_all, reference, shapes)
        finest = src[:, :shapes[0][0] * shapes[0][1]].transpose(1, 2).reshape(
            src.shape[0], -1, *shapes[0])
        lateral = self.lateral_conv(features["res2"])
        fused = lateral + F.interpolate(finest, size=lateral.shape[-2:], mode="bilinear",
                                        align_corners=False)
        return src, shapes, self.mask_features(self.output_conv(fused))
