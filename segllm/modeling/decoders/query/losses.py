"""The set loss of the query decoders (MaskDINO's criterion, without denoising queries).

For every prediction set (the last layer, each earlier layer, the selected proposals: deep
supervision) queries are matched to the ground truth (``matching.match``), then:

- class: sigmoid focal loss over every query and class (unmatched queries: all zeros);
- box: L1 on (cx, cy, w, h) and generalised-IoU loss (``torchvision.ops``) of matched queries;
- box IoU (HIPIE's IoU branch, where the predictions carry ``ious``): BCE of each matched
  query's predicted IoU against its box's actual IoU with its object (HIPIE's
  ``loss_boxiou``: a mean over the matched queries, weight 1);
- mask: BCE and Dice of matched queries on points sampled where the prediction is most
  uncertain (|logit| smallest, from ``oversample_ratio`` times more random candidates) plus
  random points (Mask2Former's ``get_uncertain_point_coords_with_randomness``), so memory does
  not grow with the mask size.

Every part is divided by the number of ground-truth objects in the batch. All weights and
sampling sizes are :class:`QueryLossConfig` fields (``decoder_config.loss``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from .matching import Target, match, point_sample
from .transformer_decoder import Predictions


@dataclass
class QueryLossConfig:
    """Loss weights (MaskDINO / HIPIE R50 defaults), also the matching costs' weights."""

    class_weight: float = 2.0  # HIPIE r50.yaml DDETRS.CLASS_WEIGHT (MaskDINO: 4.0)
    box_l1_weight: float = 5.0
    giou_weight: float = 2.0
    mask_bce_weight: float = 5.0
    dice_weight: float = 5.0
    box_iou_weight: float = 1.0  # HIPIE's loss_boxiou is outside its weight_dict: weight 1
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    num_points: int = 12544  # 112 * 112
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    deep_supervision: bool = True  # also supervise earlier layers and the proposals
    # SegLLM's HIPIESementator adds this times the mean squared [SEG] prompt embedding
    prompt_l2_weight: float = 1e-3


PARTS = ("class", "box_l1", "giou", "mask_bce", "dice")


def uncertain_points(logits: torch.Tensor, *, num_points: int, oversample_ratio: float,
                     importance_sample_ratio: float) -> torch.Tensor:
    """[M, h, w] mask logits -> [M, num_points, 2] points (x, y) in [0, 1]: the most uncertain
    of ``oversample_ratio * num_points`` random candidates, plus random points."""
    m = logits.shape[0]
    candidates = torch.rand(m, int(num_points * oversample_ratio), 2, device=logits.device)
    uncertainty = -point_sample(logits[:, None].float(), candidates)[:, 0].abs()
    num_uncertain = int(importance_sample_ratio * num_points)
    index = uncertainty.topk(num_uncertain, dim=1).indices
    picked = candidates.gather(1, index[..., None].expand(-1, -1, 2))
    rest = torch.rand(m, num_points - num_uncertain, 2, device=logits.device)
    return torch.cat([picked, rest], dim=1)


def point_mask_losses(pred: torch.Tensor, target: torch.Tensor, cfg: QueryLossConfig
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed BCE and Dice of [M, h, w] logits vs [M, S, S] masks on sampled points."""
    with torch.no_grad():
        coords = uncertain_points(pred, num_points=cfg.num_points,
                                  oversample_ratio=cfg.oversample_ratio,
                                  importance_sample_ratio=cfg.importance_sample_ratio)
        labels = point_sample(target[:, None].float(), coords)[:, 0]
    logits = point_sample(pred[:, None].float(), coords)[:, 0]
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1).sum()
    prob = logits.sigmoid()
    dice = 1 - (2 * (prob * labels).sum(1) + 1) / (prob.sum(1) + labels.sum(1) + 1)
    return bce, dice.sum()


def set_loss(pred: Predictions, targets: list[Target], cfg: QueryLossConfig,
             num_objects: float) -> dict[str, torch.Tensor]:
    """The unweighted parts of one prediction set over N prompts (``targets``: one each)."""
    onehot = torch.zeros_like(pred.logits, dtype=torch.float32)
    src_boxes, tgt_boxes, src_masks, tgt_masks, src_ious = [], [], [], [], []
    for i, target in enumerate(targets):
        rows, cols = match(pred.logits[i], pred.boxes[i], pred.masks[i], target,
                           class_weight=cfg.class_weight, box_l1_weight=cfg.box_l1_weight,
                           giou_weight=cfg.giou_weight, mask_bce_weight=cfg.mask_bce_weight,
                           dice_weight=cfg.dice_weight, num_points=cfg.num_points,
                           focal_alpha=cfg.focal_alpha, focal_gamma=cfg.focal_gamma)
        rows, cols = rows.to(pred.logits.device), cols.to(pred.logits.device)
        onehot[i, rows, target.labels[cols]] = 1.0
        src_boxes.append(pred.boxes[i, rows])
        tgt_boxes.append(target.boxes[cols])
        src_masks.append(pred.masks[i, rows])
        tgt_masks.append(target.masks[cols])
        if pred.ious is not None:
            src_ious.append(pred.ious[i, rows])
    parts = {"class": sigmoid_focal_loss(pred.logits.float(), onehot, alpha=cfg.focal_alpha,
                                         gamma=cfg.focal_gamma, reduction="sum")}
    src_b = torch.cat(src_boxes).float() if targets else pred.boxes.new_zeros((0, 4))
    tgt_b = torch.cat(tgt_boxes).float() if targets else src_b
    if src_b.shape[0] == 0:  # no object anywhere: only the class loss teaches
        zero = pred.boxes.sum() * 0.0 + pred.masks.sum() * 0.0
        parts.update({name: zero for name in PARTS[1:]})
        if pred.ious is not None:
            parts["box_iou"] = pred.ious.sum() * 0.0
    else:
        parts["box_l1"] = F.l1_loss(src_b, tgt_b, reduction="sum")
        parts["giou"] = generalized_box_iou_loss(box_convert(src_b, "cxcywh", "xyxy"),
                                                 box_convert(tgt_b, "cxcywh", "xyxy"),
                                                 reduction="sum")
        parts["mask_bce"], parts["dice"] = point_mask_losses(torch.cat(src_masks),
                                                             torch.cat(tgt_masks), cfg)
        if pred.ious is not None:
            with torch.no_grad():
                actual = box_iou(box_convert(src_b, "cxcywh", "xyxy"),
                                 box_convert(tgt_b, "cxcywh", "xyxy")).diagonal()
            # a mean over the matched queries (not over the objects, as HIPIE): undone below
            parts["box_iou"] = F.binary_cross_entropy_with_logits(
                torch.cat(src_ious).float(), actual, reduction="mean") * num_objects
    return {name: value / num_objects for name, value in parts.items()}


def weighted_total(parts: dict[str, torch.Tensor], cfg: QueryLossConfig) -> torch.Tensor:
    weights = {"class": cfg.class_weight, "box_l1": cfg.box_l1_weight,
               "giou": cfg.giou_weight, "mask_bce": cfg.mask_bce_weight,
               "dice": cfg.dice_weight, "box_iou": cfg.box_iou_weight}
    return sum(weights[name] * value for name, value in parts.items())


def query_set_loss(sets: list[Predictions], targets: list[Target], cfg: QueryLossConfig
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(weighted total over every supervised set, the first set's unweighted parts); ``sets``
    starts with the last layer's predictions."""
    num_objects = max(1.0, float(sum(t.labels.numel() for t in targets)))
    supervised = sets if cfg.deep_supervision else sets[:1]
    total, first = None, None
    for pred in supervised:
        parts = set_loss(pred, targets, cfg, num_objects)
        first = first if first is not None else parts
        term = weighted_total(parts, cfg)
        total = term if total is None else total + term
    return total, first
