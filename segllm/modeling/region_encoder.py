"""GLaMM's region encoder: a user's box -> one LLM token, from several CLIP layers.

GLaMM (mbzuai-oryx/groundingLMM, ``model/layers.py``: ``MLVLROIQueryModule``) reads the
patch features of ``num_levels`` CLIP layers ``layer_step`` apart, ending at the layer LLaVA
reads (CLIP-L/336 with layer -2: layers -11, -8, -5, -2). What it does with them:

1. each level becomes a grid (24 x 24 for CLIP-L/336), upsampled bilinearly so the deepest is
   the coarsest: level ``l`` of ``L`` is ``2 ** (L - 1 - l)`` times the grid (192, 96, 48, 24);
2. ``fuse``: per level a 1x1 conv over the features plus two coordinate channels, then
   ``num_fuse`` rounds in which every level keeps half its channels, takes a quarter from
   the level above and a quarter from the level below (resized to its own size), and goes
   through that round's conv (3x3, no bias) + GroupNorm + ReLU, shared by the levels;
3. RoIAlign (``roi_size`` square, ``sampling_ratio`` 2, aligned) of the box on every level,
   a 3x3 conv per level, summed, ReLU, flattened, a Linear to ``query_dim``, plus an
   embedding of the box (Linear, ReLU, LayerNorm, twice), and a Linear to the LLM width.

Two habits of their code are kept because their weights were trained with them: boxes are
scaled by 224 (not the 336 of the image) before RoIAlign, and the upsampled levels are
rounded to bfloat16 whatever the model's dtype. Boxes are ``x1, y1, x2, y2`` divided by the
image's width and height.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align


class LevelFusion(nn.Module):
    """Step 2 of the module docstring: coordinates, per-level 1x1 convs, channel exchange."""

    def __init__(self, feature_dim: int, num_levels: int, num_fuse: int, norm_groups: int):
        super().__init__()
        self.num_levels = num_levels
        self.shuffle = feature_dim // 4
        self.keep = feature_dim - 2 * self.shuffle
        self.input_convs = nn.ModuleList(nn.Conv2d(feature_dim + 2, feature_dim, 1)
                                         for _ in range(num_levels))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(feature_dim, feature_dim, 3, padding=1, bias=False),
                          nn.GroupNorm(norm_groups, feature_dim), nn.ReLU())
            for _ in range(num_fuse))

    @staticmethod
    def with_coordinates(x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] + x and y in [-1, 1] as two more channels."""
        b, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device)
        xs = torch.linspace(-1, 1, w, device=x.device)
        y, xx = torch.meshgrid(ys, xs, indexing="ij")
        coords = torch.stack([xx, y]).expand(b, -1, -1, -1).to(x.dtype)
        return torch.cat([x, coords], dim=1)

    def exchange(self, levels: list[torch.Tensor], block: nn.Module) -> list[torch.Tensor]:
        out = []
        last = self.num_levels - 1
        for lvl, target in enumerate(levels):
            above, below = levels[min(lvl + 1, last)], levels[max(lvl - 1, 0)]
            size = target.shape[-2:]
            from_above = _resize(above[:, self.keep + self.shuffle:], size).to(target.dtype)
            from_below = _resize(below[:, self.keep:self.keep + self.shuffle], size)
            out.append(block(torch.cat([target[:, :self.keep], from_above,
                                        from_below.to(target.dtype)], dim=1)))
        return out

    def forward(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        levels = [conv(self.with_coordinates(x)) for conv, x in zip(self.input_convs, levels,
                                                                      strict=True)]
        for block in self.blocks:
            levels = self.exchange(levels, block)
        return levels


class RegionEncoder(nn.Module):
    """Boxes on an image -> one LLM-width token each (GLaMM's ``<bbox>`` token).

    Args:
        feature_dim: CLIP's width (the levels' channels).
        out_dim: the LLM's width.
        patch_size: CLIP's patch size (the coarsest level's stride in pixels).
        num_levels, num_fuse, roi_size, query_dim, box_hidden, norm_groups, box_scale: see the
            module docstring (GLaMM: 4, 5, 14, 1024, 256, 64, 224).
    """

    def __init__(self, *, feature_dim: int, out_dim: int, patch_size: int, num_levels: int = 4,
                 num_fuse: int = 5, roi_size: int = 14, query_dim: int = 1024,
                 box_hidden: int = 256, norm_groups: int = 64, box_scale: float = 224.0,
                 sampling_ratio: int = 2):
        super().__init__()
        self.num_levels = num_levels
        self.roi_size = roi_size
        self.box_scale = box_scale
        self.sampling_ratio = sampling_ratio
        # level l (shallowest first) is upsampled 2 ** (L - 1 - l) times: its stride shrinks
        self.strides = [patch_size / 2 ** (num_levels - 1 - lvl) for lvl in range(num_levels)]
        self.fuse = LevelFusion(feature_dim, num_levels, num_fuse, norm_groups)
        self.level_convs = nn.ModuleList(nn.Conv2d(feature_dim, feature_dim, 3, padding=1)
                                         for _ in range(num_levels))
        self.box_embed = nn.Sequential(
            nn.Linear(4, box_hidden), nn.ReLU(), nn.LayerNorm(box_hidden),
            nn.Linear(box_hidden, query_dim), nn.ReLU(), nn.LayerNorm(query_dim))
        self.flatten = nn.Linear(feature_dim * roi_size * roi_size, query_dim)
        self.out_proj = nn.Linear(query_dim, out_dim)

    def grids(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """[B, N, C] patch tokens (no CLS) per level -> [B, C, h, w] at each level's scale."""
        if len(levels) != self.num_levels:
            raise ValueError(f"the region encoder takes {self.num_levels} CLIP levels, "
                             f"got {len(levels)}")
        side = math.isqrt(levels[0].shape[1])
        if side * side != levels[0].shape[1]:
            raise ValueError(f"{levels[0].shape[1]} patch tokens are not a square grid")
        out = []
        for lvl, x in enumerate(levels):
            grid = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
            scale = 2 ** (self.num_levels - 1 - lvl)
            up = _resize(grid, (side * scale, side * scale))
            out.append(up.to(torch.bfloat16).to(x.dtype))  # GLaMM's cast (module docstring)
        return out

    def forward(self, levels: list[torch.Tensor], boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        """``levels``: per level [B, N, C]; ``boxes``: per image [k_i, 4] normalised x1y1x2y2.
        Returns per image [k_i, out_dim]."""
        fused = self.fuse(self.grids(levels))
        counts = [len(b) for b in boxes]
        flat = torch.cat(list(boxes)).to(fused[0].dtype)
        if flat.numel() == 0:
            return [flat.new_zeros(0, self.out_proj.out_features) for _ in boxes]
        image_index = torch.repeat_interleave(torch.arange(len(boxes), device=flat.device),
                                              torch.tensor(counts, device=flat.device))
        rois = torch.cat([image_index[:, None].to(flat.dtype), flat * self.box_scale], dim=1)
        pooled = 0
        for lvl, (feat, conv) in enumerate(zip(fused, self.level_convs, strict=True)):
            crop = roi_align(feat.float(), rois.float(), self.roi_size,
                             spatial_scale=1 / self.strides[lvl],
                             sampling_ratio=self.sampling_ratio, aligned=True)
            pooled = pooled + conv(crop.to(feat.dtype))
        query = self.flatten(F.relu(pooled).flatten(1)) + self.box_embed(flat)
        return list(self.out_proj(query).split(counts))


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear, corners aligned, computed in fp32 (GLaMM's; bf16 upsampling is missing on
    some devices)."""
    return F.interpolate(x.float(), size=tuple(size), mode="bilinear", align_corners=True)


def clip_levels(hidden_states: tuple[torch.Tensor, ...], *, last_layer: int, num_levels: int,
                step: int = 3) -> list[torch.Tensor]:
    """The region encoder's inputs from a CLIP forward's hidden states: layers ``last_layer
    - step * (num_levels - 1)``, ..., ``last_layer`` (shallowest first), CLS dropped."""
    count = len(hidden_states)
    last = last_layer % count
    layers = [last - step * (num_levels - 1 - i) for i in range(num_levels)]
    if layers[0] < 0:
        raise ValueError(f"CLIP has {count - 1} layers; {num_levels} levels {step} apart "
                         f"ending at layer {last_layer} do not fit")
    return [hidden_states[i][:, 1:] for i in layers]


def build_region_encoder(config) -> RegionEncoder | None:
    """The region encoder ``config.region_encoder`` asks for (a ``SegLLMConfig``), or None."""
    rcfg = config.region_encoder
    if not rcfg.enabled:
        return None
    return RegionEncoder(feature_dim=config.vision.hidden_size, out_dim=config.llm.hidden_size,
                         patch_size=config.vision.patch_size, num_levels=rcfg.num_levels,
                         num_fuse=rcfg.num_fuse, roi_size=rcfg.roi_size,
                         query_dim=rcfg.query_dim, box_hidden=rcfg.box_hidden,
                         norm_groups=rcfg.norm_groups, box_scale=rcfg.box_scale)
