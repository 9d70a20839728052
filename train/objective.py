"""The training objective: CE + the decoder's mask loss over a ``SegBatch``.

The mask loss is the decoder's (``MaskDecoder.training_loss``): bce_weight * BCE +
dice_weight * Dice of the returned masks by default (SAM), a set loss over every query for
a query decoder (``decoder: hipie``).

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

from dataclasses import dataclass, field

import torch
from torch import nn

from segllm.batching import SegBatch
from segllm.config import LossConfig
from segllm.modeling.model import SegLLMModel, SegLLMOutput

from .losses import language_model_loss


@dataclass
class ObjectiveOutput:
    """The weighted loss, its parts, and the model's output (masks, logits) it came from."""

    loss: torch.Tensor
    ce_loss: torch.Tensor
    bce_loss: torch.Tensor
    dice_loss: torch.Tensor
    num_masks: int
    output: SegLLMOutput
    mask_loss: torch.Tensor  # the decoder's weighted total (MaskDecoder.training_loss)
    mask_parts: dict[str, torch.Tensor] = field(default_factory=dict)  # its named parts
    aux_loss: torch.Tensor | None = None  # the image tokens' word loss (train/vision_aux.py)

    @property
    def logits(self) -> torch.Tensor:
        return self.output.logits

    @property
    def mask_logits(self) -> list[torch.Tensor]:
        return self.output.mask_logits

    def masks_by_round(self, sample: int, num_rounds: int) -> list[list[torch.Tensor]]:
        return self.output.masks_by_round(sample, num_rounds)


def compute_objective(model: SegLLMModel, batch: SegBatch, *, forward=None,
                      weights: LossConfig | None = None, vision_aux=None) -> ObjectiveOutput:
    """Forward ``batch`` and weigh its losses.

    Args:
        model: the module (its ``embed_inputs`` and parts are used directly).
        batch: a collated batch with targets.
        forward: what runs the forward (a DeepSpeed engine wrapping ``model``); ``model``
            itself by default.
        weights: loss weights; ``model.config.loss`` by default.
        vision_aux: a ``train.vision_aux.VisionAuxLoss``, added with its weight when given.
    """
    forward = forward or model
    weights = weights or model.config.loss
    inputs = batch.model_inputs()
    embeds = model.embed_inputs(batch.input_ids, batch.pixel_values, batch.ref_pixel_values,
                                batch.ref_boxes, batch.ref_rounds, batch.round_ids,
                                batch.sample_ids, frame_pixel_values=batch.frame_pixel_values,
                                frame_counts=batch.frame_counts)
    if not len(batch.ref_boxes) and _trains(model.mask_encoder):
        embeds = embeds + 0.0 * model.mask_encoder.box_proj(embeds.new_zeros(1, 4)).sum()
    out = forward(**inputs, inputs_embeds=embeds)
    check_seg_counts(batch, out)
    ce = language_model_loss(out.logits, batch.labels)
    device = out.hidden_states.device
    mask = model.decoder.training_loss(
        mask_logits=out.mask_logits, targets=[t.to(device) for t in batch.target_masks],
        target_weights=batch.target_weights,
        ref_masks=[r.to(device) for r in batch.seg_ref_masks] if batch.seg_ref_masks else None,
        extras=out.decoder_extras, weights=weights)
    loss = weights.ce_weight * ce + mask.total
    if mask.num_masks == 0:
        loss = loss + _unused_mask_path(model, out, batch)
    aux = None
    if vision_aux is not None:
        aux = vision_aux(model, batch, embeds)
        loss = loss + vision_aux.args.weight * aux
    return ObjectiveOutput(loss=loss, ce_loss=ce, bce_loss=mask.bce, dice_loss=mask.dice,
                           num_masks=mask.num_masks, output=out, mask_loss=mask.total,
                           mask_parts=mask.parts, aux_loss=aux)


def _trains(module: nn.Module | None) -> bool:
    return (module is not None and torch.is_grad_enabled()
            and any(p.requires_grad for p in module.parameters()))


def _unused_mask_path(model: SegLLMModel, out: SegLLMOutput, batch: SegBatch) -> torch.Tensor:
    """Zero times one decoded mask and the decoder's loss of it against an empty target, for a
    batch without any [SEG] (see the module docstring; the loss reaches what the mask alone
    does not, e.g. a query decoder's proposal head)."""
    if not (_trains(model.seg_head) or _trains(model.decoder)):
        return out.hidden_states.new_zeros(())
    extras: list = []
    logits, scores, _ = model.decode_masks(out.hidden_states[0, :1], out.image_features[:1],
                                           batch.decoder_input_sizes[0], batch.original_sizes[0],
                                           extras=extras)
    mask = model.decoder.training_loss(mask_logits=[logits], targets=[torch.zeros_like(logits)],
                                       target_weights=None, ref_masks=None, extras=extras,
                                       weights=model.config.loss)
    return 0.0 * (logits.sum() + scores.sum() + mask.total).float()


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
