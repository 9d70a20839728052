"""A video's reference frames as LLM tokens: each frame's patch features average-pooled to a
fixed count, then the same projector as the image's tokens.

VISA gives its LLM 112 tokens per reference frame (Chat-UniVi merges a frame's tokens down to
that count); we pool the vision tower's patch grid with ``adaptive_avg_pool2d`` to a
``rows x cols`` grid of ``config.video.tokens_per_frame`` cells, keeping the layout (rows and
columns as close to the patch grid's proportions as the count allows: 112 on a 24 x 24 grid
is 8 x 14). Pooling comes before the projector, so the projector runs on the pooled tokens
only. The CLS token never enters a frame's tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .llava import vision_hidden


def pooling_grid(count: int, grid: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) with ``rows * cols == count`` that fits inside ``grid`` (patch rows, cols)
    and is closest to its proportions; ``ValueError`` when ``count`` has no such layout."""
    rows_max, cols_max = grid
    if count < 1:
        raise ValueError(f"config.video.tokens_per_frame must be >= 1 to pool, got {count}")
    fits = [(r, count // r) for r in range(1, rows_max + 1)
            if count % r == 0 and count // r <= cols_max]
    if not fits:
        raise ValueError(
            f"config.video.tokens_per_frame={count} cannot be laid out on the vision tower's "
            f"{rows_max} x {cols_max} patch grid: choose rows x cols with rows <= {rows_max} "
            f"and cols <= {cols_max}")
    aspect = math.log(rows_max / cols_max)
    # closest proportions; of two mirrored layouts the one with fewer rows (rounding first,
    # so floating-point noise cannot pick between them)
    return min(fits, key=lambda rc: (round(abs(math.log(rc[0] / rc[1]) - aspect), 9), rc[0]))


def pool_patches(patches: torch.Tensor, grid: tuple[int, int], count: int) -> torch.Tensor:
    """[F, rows_max * cols_max, D] patch features (row-major) -> [F, count, D] pooled."""
    frames, n, dim = patches.shape
    if n != grid[0] * grid[1]:
        raise ValueError(f"{n} patch features do not form the {grid[0]} x {grid[1]} grid")
    rows, cols = pooling_grid(count, grid)
    spatial = patches.transpose(1, 2).reshape(frames, dim, grid[0], grid[1])
    pooled = F.adaptive_avg_pool2d(spatial, (rows, cols))  # mean of each cell's patches
    return pooled.flatten(2).transpose(1, 2)


def frame_tokens(llava, pixel_values: torch.Tensor, *, layer: int, grid: tuple[int, int],
                 count: int) -> torch.Tensor:
    """[F, 3, S, S] CLIP input of the reference frames -> [F, count, H] projected tokens."""
    patches = vision_hidden(llava, pixel_values, layer)[:, 1:]  # the CLS token left out
    pooled = pool_patches(patches, grid, count)
    return llava.model.multi_modal_projector(pooled)
