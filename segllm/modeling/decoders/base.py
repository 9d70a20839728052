"""The interface every mask decoder implements; ``segllm.modeling.decoders`` builds one by name.

A decoder turns [SEG] prompt embeddings into masks over one image. It owns its whole image
path, so the rest of segllm never needs to know which decoder it runs:

- preprocessing (class-level, because batching has a config but no model):
  uint8 [3, H, W] image -> (pixels the decoder reads, (h, w) the image takes inside them);
- image encoding: pixels [B, 3, S, S] -> features [B, ...], computed once per image (callers
  keep them across rounds);
- decoding: features [1, ...] + prompts [N, T, C] (+ the referenced masks [N, H, W] for
  mask-aware decoding) -> mask logits [N, H, W] at the original size and scores [N];
- its mask threshold (logit above which a pixel is in the mask);
- its trainable groups (``SegLLMConfig.trainable.decoder`` names them);
- its dtype needs (``keep_float32``: the pipeline keeps it in float32 under a bf16 / fp16 model);
- its settings: ``config_class``, a dataclass stored as ``SegLLMConfig.decoder_config`` and
  type-checked by ``segllm.typed_config``;
- its training loss (``training_loss``, reached from ``train/objective.py``): by default BCE +
  Dice of the returned masks; a decoder with a loss of its own (a query decoder's set loss)
  returns what it needs from ``decode_for_training`` and overrides ``training_loss``;
- optionally: reading its original checkpoints (and the sizes they imply), and reading config
  keys an older layout wrote for it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..loading import load_state_dict_strict, read_torch_state_dict


@dataclass
class MaskLoss:
    """A decoder's training loss over a batch: ``total`` (weighted, added to the language
    loss), the mask BCE and Dice for logs (unweighted), the number of masks, named parts."""

    total: torch.Tensor
    bce: torch.Tensor
    dice: torch.Tensor
    num_masks: int
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


class MaskDecoder(nn.Module, ABC):
    """A mask decoder prompted by [SEG] embeddings.

    Args:
        config: an instance of ``config_class`` (the decoder's sizes and settings).
        mask_aware: also take each [SEG]'s referenced masks (SegLLM's mask-aware decoding).
    """

    config_class: ClassVar[type]
    # every trainable group's name -> trained by default; the config's trainable.decoder
    # may name only these
    trainable_defaults: ClassVar[Mapping[str, bool]] = {}
    # under a half-precision model, run this decoder in float32 (SegLLMPipeline does it)
    keep_float32: ClassVar[bool] = False

    def __init__(self, config: Any, *, mask_aware: bool = False):
        super().__init__()
        self.config = config
        self.mask_aware = mask_aware

    # -- preprocessing (no instance needed) --------------------------------------------------

    @classmethod
    @abstractmethod
    def preprocess(cls, image: torch.Tensor, config: Any) -> tuple[torch.Tensor, tuple[int, int]]:
        """uint8 [3, H, W] -> (float [3, S, S] decoder pixels, (h, w) of the image inside them)."""

    @classmethod
    @abstractmethod
    def resized_size(cls, height: int, width: int, config: Any) -> tuple[int, int]:
        """(h, w) that an image of ``height`` x ``width`` takes inside the decoder's input;
        a 0 means the image is too elongated for it."""

    @classmethod
    def describe(cls, config: Any) -> str:
        """One line for ``segllm info``."""
        return type(config).__name__

    @classmethod
    def describe_loss(cls, config: Any, weights: Any) -> str:
        """The mask loss ``training_loss`` computes, for ``segllm info`` (``weights``: the
        model's ``LossConfig``)."""
        return f"BCE x{weights.bce_weight} + Dice x{weights.dice_weight}"

    # -- the model-side interface ------------------------------------------------------------

    @property
    @abstractmethod
    def prompt_dim(self) -> int:
        """C: the size of one prompt embedding (the seg head's output)."""

    @property
    def mask_threshold(self) -> float:
        """Mask logits above this are in the mask."""
        return 0.0

    @abstractmethod
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] preprocessed images (any float dtype) -> [B, ...] image features."""

    @abstractmethod
    def decode(self, image_features: torch.Tensor, prompts: torch.Tensor,
               input_size: tuple[int, int], original_size: tuple[int, int], *,
               ref_masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for the prompts of one image.

        Args:
            image_features: [1, ...] from ``encode_image``.
            prompts: [N, T, C] prompt embeddings (T tokens per mask).
            input_size: (h, w) from ``preprocess``.
            original_size: (H, W) of the image; masks come back at this size.
            ref_masks: [N, H, W] {0, 1}, for each prompt the union of the masks its question
                references (all zero: none); read only by a mask-aware decoder.

        Returns:
            mask logits [N, H, W] and scores [N].
        """

    def decode_for_training(self, image_features: torch.Tensor, prompts: torch.Tensor,
                            input_size: tuple[int, int], original_size: tuple[int, int], *,
                            ref_masks: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """``decode`` plus whatever ``training_loss`` needs of this image (None by default)."""
        logits, scores = self.decode(image_features, prompts, input_size, original_size,
                                     ref_masks=ref_masks)
        return logits, scores, None

    def training_loss(self, *, mask_logits: list[torch.Tensor], targets: list[torch.Tensor],
                      target_weights: list[torch.Tensor] | None,
                      ref_masks: list[torch.Tensor] | None, extras: list[Any],
                      weights: Any) -> MaskLoss:
        """The mask loss of a batch.

        Args:
            mask_logits: per sample [n_i, H_i, W_i], what ``decode`` returned.
            targets: per sample [n_i, H_i, W_i] {0, 1} target masks, in the same order.
            target_weights: per sample [n_i] weight of each target (0: leave it out, e.g. a
                mask filled from a box); None weighs every target 1.
            ref_masks: per sample [n_i, H_i, W_i], each [SEG]'s referenced masks' union.
            extras: per sample, the third item ``decode_for_training`` returned.
            weights: the model's ``LossConfig``.

        By default: ``bce_weight`` * BCE + ``dice_weight`` * Dice of the returned masks
        (``segllm.train.losses``; each mask counts once).
        """
        from segllm.train.losses import mask_losses  # the losses live with training

        bce, dice, count = mask_losses(mask_logits, targets, target_weights)
        return MaskLoss(total=weights.bce_weight * bce + weights.dice_weight * dice, bce=bce,
                        dice=dice, num_masks=count)

    @abstractmethod
    def trainable_groups(self) -> dict[str, nn.Module]:
        """Group name -> module, for freezing and parameter reports (names as in
        ``trainable_defaults``; a group this instance lacks is left out)."""

    def apply_trainable(self, flags: Mapping[str, bool]) -> None:
        """``requires_grad`` of each group as ``flags`` says (its default where not named)."""
        for name, module in self.trainable_groups().items():
            module.requires_grad_(flags.get(name, self.trainable_defaults.get(name, False)))

    # -- original checkpoints ------------------------------------------------------------------

    @classmethod
    def read_checkpoint(cls, path: str | Path) -> dict[str, torch.Tensor]:
        """The tensors of an original checkpoint file of this decoder."""
        return read_torch_state_dict(path)

    @classmethod
    def config_for_checkpoint(cls, state: Mapping[str, torch.Tensor], config: Any) -> Any:
        """The config whose sizes fit ``state`` (``config`` itself when nothing can be told)."""
        return config

    def load_checkpoint(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load an original checkpoint, strictly (the message names ``source``)."""
        load_state_dict_strict(self, state, source=source)

    # -- older config layouts ----------------------------------------------------------------

    @classmethod
    def upgrade_legacy_config(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Whole-model config data with keys an older layout used for this decoder, rewritten
        to the current layout with the same meaning (in place; returned)."""
        return data
