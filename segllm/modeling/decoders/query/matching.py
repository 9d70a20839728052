"""Hungarian matching of queries to ground-truth objects (DETR / MaskDINO's matcher).

The cost of giving ground truth g to query q is a weighted sum of a focal class cost, the L1
and generalised-IoU distances of their boxes, and the BCE and Dice distances of their masks on
points sampled uniformly (the same points for every pair, so the cost stays cheap at any mask
size). ``scipy.optimize.linear_sum_assignment`` solves each prompt's assignment: every ground
truth gets exactly one query, every other query is "no object".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou


@dataclass
class Target:
    """One prompt's ground truth: class indices [G], boxes [G, 4] (cx, cy, w, h in [0, 1] of
    the padded input), masks [G, S, S] in {0, 1} over the padded input."""

    labels: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor


def point_sample(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear values of [N, C, H, W] maps at [N, P, 2] points (x, y) in [0, 1] -> [N, C, P]."""
    grid = (2.0 * coords - 1.0)[:, :, None].to(maps.dtype)
    return F.grid_sample(maps, grid, mode="bilinear", align_corners=False)[..., 0]


def focal_class_cost(logits: torch.Tensor, labels: torch.Tensor, *, alpha: float,
                     gamma: float) -> torch.Tensor:
    """[Q, K] logits, [G] labels -> [Q, G]: the focal loss of calling q class labels[g], minus
    that of calling it background (Deformable-DETR's class cost)."""
    prob = logits.float().sigmoid()
    neg = (1 - alpha) * prob ** gamma * -(1 - prob + 1e-8).log()
    pos = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
    return (pos - neg)[:, labels]


def mask_costs(pred: torch.Tensor, target: torch.Tensor, num_points: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """[Q, h, w] logits vs [G, S, S] masks -> ([Q, G] mean BCE, [Q, G] Dice) on the same
    ``num_points`` uniformly drawn points."""
    coords = torch.rand(1, num_points, 2, device=pred.device)
    p = point_sample(pred[None].float(), coords)[0]  # [Q, P]
    t = point_sample(target[None].float(), coords)[0]  # [G, P]
    pos = F.binary_cross_entropy_with_logits(p, torch.ones_like(p), reduction="none")
    neg = F.binary_cross_entropy_with_logits(p, torch.zeros_like(p), reduction="none")
    bce = (pos @ t.T + neg @ (1 - t).T) / num_points
    sig = p.sigmoid()
    dice = 1 - (2 * sig @ t.T + 1) / (sig.sum(-1)[:, None] + t.sum(-1)[None] + 1)
    return bce, dice


@torch.no_grad()
def match(logits: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor, target: Target, *,
          class_weight: float, box_l1_weight: float, giou_weight: float,
          mask_bce_weight: float, dice_weight: float, num_points: int,
          focal_alpha: float = 0.25, focal_gamma: float = 2.0
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """One prompt's optimal assignment: (query indices, ground-truth indices), each [G].

    Args:
        logits: [Q, K] class logits; boxes: [Q, 4] (cx, cy, w, h); masks: [Q, h, w] logits.
        target: its ground truth (G objects; G = 0 gives empty indices).
    """
    if target.labels.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    cost = class_weight * focal_class_cost(logits, target.labels, alpha=focal_alpha,
                                           gamma=focal_gamma)
    cost = cost + box_l1_weight * torch.cdist(boxes.float(), target.boxes.float(), p=1)
    giou = generalized_box_iou(box_convert(boxes.float(), "cxcywh", "xyxy"),
                               box_convert(target.boxes.float(), "cxcywh", "xyxy"))
    cost = cost - giou_weight * giou
    bce, dice = mask_costs(masks, target.masks, num_points)
    cost = cost + mask_bce_weight * bce + dice_weight * dice
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)
