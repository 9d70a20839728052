"""Mask losses. Total = ce_weight * CE + bce_weight * BCE + dice_weight * Dice."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mask_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel BCE of one mask, [H, W] logits vs [H, W] {0, 1} targets."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


def mask_dice(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss of one mask: 1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s).

    The smoothing term keeps an empty target with an empty prediction at loss ~0.
    """
    p = logits.float().sigmoid().flatten()
    t = targets.float().flatten()
    return 1.0 - (2.0 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth)


def mask_losses(logits: list[torch.Tensor], targets: list[torch.Tensor],
                weights: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """BCE and Dice averaged over every mask of the batch, each mask counting its weight.

    ``logits`` and ``targets`` are lists (one entry per sample) of [n_i, H_i, W_i] tensors;
    ``weights`` (optional) a list of [n_i] per-mask weights (0 leaves a mask out: a filled
    box, ``box_derived``). Returns (bce, dice, number of masks with a weight); both losses
    are 0 when no mask has a weight, still connected to the logits so every process of a
    ZeRO-2 run produces the same gradients.
    """
    bce, dice, mask_weights = [], [], []
    for i, (lg, tg) in enumerate(zip(logits, targets, strict=True)):
        for m in range(lg.shape[0]):
            bce.append(mask_bce(lg[m], tg[m]))
            dice.append(mask_dice(lg[m], tg[m]))
            mask_weights.append(1.0 if weights is None else float(weights[i][m]))
    if not bce:
        zero = torch.zeros((), device=logits[0].device if logits else "cpu")
        return zero, zero, 0
    w = torch.tensor(mask_weights, device=bce[0].device)
    total = w.sum().clamp(min=1.0)  # all-zero weights: 0 * losses, not 0 / 0
    count = int((w > 0).sum())
    return (torch.stack(bce) * w).sum() / total, (torch.stack(dice) * w).sum() / total, count


def language_model_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, -100 labels ignored: [B, L, V] logits vs [B, L] labels."""
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
