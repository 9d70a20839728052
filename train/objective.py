"""The training objective: CE + bce_weight * BCE + dice_weight * Dice over a ``SegBatch``.

The model's forward knows nothing of targets or losses; this module pairs the i-th ``[SEG]``
of each conversation with its i-th target mask (checking the counts round by round, naming
the sample and round when they differ), weighs the losses (``config.loss``), and adds the
zero-valued "touches" a ZeRO-2 run needs:

- ZeRO-2 reduces gradients bucket by bucket as backward produces them, so every process must
  produce the same gradients in the same order. A batch with no reference still runs the box
  head (times zero) *where real box tokens enter*, on the input embeddings, and a batch with
  no ``[SEG]`` still decodes one mask (times zero), so the seg head and a trainable decoder
  get (zero) gradients too. Nothing extra runs when no gradient is wanted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from segllm.batching import SegBatch
from segllm.config import LossConfig
from segllm.modeling.model import SegLLMModel, SegLLMOutput

from .losses import language_model_loss, mask_losses


@dataclass
class ObjectiveOutput:
    """The weighted loss, its parts, and the model's output (masks, logits) it came from."""

    loss: torch.Tensor
    ce_loss: torch.Tensor
    bce_loss: torch.Tensor
    dice_loss: torch.Tensor
    num_masks: int
    output: SegLLMOutput

    @property
    def logits(self) -> torch.Tensor:
        return self.output.logits

    @property
    def mask_logits(self) -> list[torch.Tensor]:
        return self.output.mask_logits

    def masks_by_round(self, sample: int, num_rounds: int) -> list[list[torch.Tensor]]:
        return self.output.masks_by_round(sample, num_rounds)


def compute_objective(model: SegLLMModel, batch: SegBatch, *, forward=None,
                      weights: LossConfig | None = None) -> ObjectiveOutput:
    """Forward ``batch`` and weigh its losses.

    Args:
        model: the module (its ``embed_inputs`` and parts are used directly).
        batch: a collated batch with targets.
        forward: what runs the forward (a DeepSpeed engine wrapping ``model``); ``model``
            itself by default.
        weights: loss weights; ``model.config.loss`` by default.
    """
    forward = forward or model
    weights = weights or model.config.loss
    inputs = batch.model_inputs()
    embeds = model.embed_inputs(batch.input_ids, batch.pixel_values, batch.ref_pixel_values,
                                batch.ref_boxes, batch.ref_rounds, batch.round_ids,
                                batch.sample_ids)
    if not len(batch.ref_boxes) and _trains(model.mask_encoder):
        embeds = embeds + 0.0 * model.mask_encoder.box_proj(embeds.new_zeros(1, 4)).sum()
    out = forward(**inputs, inputs_embeds=embeds)
    check_seg_counts(batch, out)
    ce = language_model_loss(out.logits, batch.labels)
    targets = [t.to(out.hidden_states.device) for t in batch.target_masks]
    bce, dice, n_masks = mask_losses(out.mask_logits, targets)
    loss = weights.ce_weight * ce + weights.bce_weight * bce + weights.dice_weight * dice
    if n_masks == 0:
        loss = loss + _unused_mask_path(model, out, batch)
    return ObjectiveOutput(loss=loss, ce_loss=ce, bce_loss=bce, dice_loss=dice,
                           num_masks=n_masks, output=out)


def _trains(module: nn.Module | None) -> bool:
    return (module is not None and torch.is_grad_enabled()
            and any(p.requires_grad for p in module.parameters()))


def _unused_mask_path(model: SegLLMModel, out: SegLLMOutput, batch: SegBatch) -> torch.Tensor:
    """Zero times one decoded mask, for a batch without any [SEG] (see the module docstring)."""
    if not (_trains(model.seg_head) or _trains(model.decoder)):
        return out.hidden_states.new_zeros(())
    logits, scores, _ = model.decode_masks(out.hidden_states[0, :1], out.image_features[:1],
                                           batch.decoder_input_sizes[0], batch.original_sizes[0])
    return 0.0 * (logits.sum() + scores.sum()).float()


def check_seg_counts(batch: SegBatch, out: SegLLMOutput) -> None:
    """The number of [SEG] tokens must equal the number of target masks, round by round."""
    for i, name in enumerate(batch.sample_ids):
        n_rounds = int(batch.round_ids[i].max()) + 1
        seg_rounds = out.mask_rounds[i]
        have = torch.bincount(seg_rounds, minlength=n_rounds).tolist()
        want = torch.bincount(batch.target_rounds[i].to(seg_rounds.device),
                              minlength=n_rounds).tolist()
        for r, (a, b) in enumerate(zip(have, want, strict=False)):
            if a != b:
                raise ValueError(f"sample {name!r} round {r}: {a} [SEG] token(s) in the "
                                 f"sequence but {b} target mask(s)")
        if len(have) != len(want):
            r = min(len(have), len(want))
            raise ValueError(f"sample {name!r} round {r}: targets given for a round that is "
                             "not in the sequence")
