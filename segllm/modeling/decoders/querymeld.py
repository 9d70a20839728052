"""QueryMeldNet as SegLLM's mask decoder (``decoder: querymeld``), and on its own.

The image path is the query family's (``hipie.py``: SegLLM's 1024 px preprocessing,
torchvision's ResNet with frozen batch norm, the multi-scale deformable encoder, 1/4-scale
mask features, computed once per image); the query decoder is the meld
(``query/meld.py``: learnable + conditional queries fused by dual-query cross-attention in
every layer, ``query_strategy`` learnable / conditional / meld).

- **In SegLLM** (``decode``): the [SEG] prompt embeddings play the text embeddings' part. A
  [SEG]'s prompt tokens [T, C] select the conditional queries (proposals scored against them),
  are read by every layer's text cross-attention, and score each query (dot product); the
  best-scoring query gives the mask. Mask-aware decoding enters as in the HIPIE decoder (and
  SegLLM's code): the union of the referenced masks is a second supervised class over the
  first half of the prompt tokens, the target the second half, and the answer is the best
  target-class query (``training_loss`` and ``answer`` are the HIPIE decoder's).
- **On its own** (``decode_texts``, trained by ``segllm train`` on unified records): each
  image's texts (class names, or referring expressions) are embedded by a text encoder
  (``query/text.py``) and each text is one class; class logits are the dot product of query
  and text embedding, as in the paper. ``instances`` turns the outputs into scored masks.

QueryMeldNet's released setting: 100 learnable + 300 conditional queries, MaskDINO's other
hyperparameters (9 decoder layers, 6 encoder layers, 256 wide, loss weights class 4, L1 5,
GIoU 2, mask BCE 5, Dice 5), Swin + CLIP encoders; ours keeps ResNet-50 (the family's
backbone) and takes any text encoder (CLIP's text tower, 512 wide, is the default width).
No released QueryMeldNet weights exist; ``read_checkpoint`` reads what our training writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..loading import load_state_dict_strict, read_torch_state_dict
from .hipie import HIPIEDecoder
from .query import QueryLossConfig, Target, query_set_loss
from .query.meld import MeldDecoder, MeldOutputs, MeldStrategy, query_counts, text_spans


@dataclass
class MeldLossConfig(QueryLossConfig):
    """The family's loss weights with MaskDINO's class weight (HIPIE-R50 uses 2.0)."""

    class_weight: float = 4.0


@dataclass
class QueryMeldConfig:
    """Sizes and loss weights; image path as the HIPIE decoder's, queries as QueryMeldNet."""

    image_size: int = 1024
    backbone_block: Literal["bottleneck", "basic"] = "bottleneck"
    backbone_layers: tuple[int, int, int, int] = (3, 4, 6, 3)  # ResNet-50
    hidden_dim: int = 256
    mask_dim: int = 256
    prompt_dim: int = 512  # text width: CLIP ViT-B's text tower (SegLLM presets: 768)
    encoder_layers: int = 6
    encoder_ffn_dim: int = 2048
    extra_levels: int = 1
    decoder_layers: int = 9  # MaskDINO's, whose hyperparameters QueryMeldNet follows
    decoder_ffn_dim: int = 2048
    num_heads: int = 8
    num_points: int = 4
    num_learnable: int = 100
    num_conditional: int = 300
    query_strategy: MeldStrategy = "meld"
    mask_threshold: float = 0.0
    loss: MeldLossConfig = field(default_factory=MeldLossConfig)


@dataclass
class Instance:
    """One predicted object of ``QueryMeldDecoder.instances``."""

    mask: torch.Tensor  # [H, W] bool at the original size
    text_index: int
    score: float
    query_kind: int


class QueryMeldDecoder(HIPIEDecoder):
    """The query-meld decoder prompted by [SEG] embeddings (or by text embeddings)."""

    config_class = QueryMeldConfig
    trainable_defaults = {"backbone": False, "pixel_decoder": False, "mask_decoder": False}

    @classmethod
    def build_predictor(cls, config: QueryMeldConfig, *, mask_aware: bool) -> nn.Module:
        return MeldDecoder(
            dim=config.hidden_dim, prompt_dim=config.prompt_dim, mask_dim=config.mask_dim,
            num_classes=2 if mask_aware else 1, layers=config.decoder_layers,
            ffn_dim=config.decoder_ffn_dim, heads=config.num_heads, points=config.num_points,
            levels=3 + config.extra_levels, num_learnable=config.num_learnable,
            num_conditional=config.num_conditional, query_strategy=config.query_strategy)

    @classmethod
    def describe(cls, config: QueryMeldConfig) -> str:
        depth = {"bottleneck": 3, "basic": 2}[config.backbone_block] * sum(
            config.backbone_layers) + 2
        learnable, conditional = query_counts(config.query_strategy,
                                              num_learnable=config.num_learnable,
                                              num_conditional=config.num_conditional)
        return (f"QueryMeldNet-style R{depth} ({config.backbone_block}), "
                f"{config.encoder_layers} enc / {config.decoder_layers} dec layers, "
                f"{config.hidden_dim}d, queries {config.query_strategy} ({learnable} learnable "
                f"+ {conditional} conditional), {config.image_size}px")

    # -- checkpoints: our own training's files (no released QueryMeldNet weights) -----------

    @classmethod
    def read_checkpoint(cls, path: str | Path) -> dict[str, torch.Tensor]:
        """A decoder state dict: ``decoder.safetensors`` written by ``segllm train`` on unified
        records, or a ``torch.save``d one (read with ``weights_only=True``)."""
        path = Path(path)
        if path.suffix == ".safetensors":
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint not found: {path}")
            from safetensors.torch import load_file

            return load_file(str(path))
        return read_torch_state_dict(path)

    @classmethod
    def config_for_checkpoint(cls, state: Mapping[str, torch.Tensor],
                              config: QueryMeldConfig) -> QueryMeldConfig:
        """The learnable-query count a state dict was trained with (others must match)."""
        learnable = state.get("predictor.query_feat.weight")
        if learnable is None or config.query_strategy != "meld":
            return config
        return replace(config, num_learnable=learnable.shape[0])

    def load_checkpoint(self, state: dict[str, torch.Tensor], source: str) -> None:
        load_state_dict_strict(self, state, source=source)

    # -- on its own: texts as classes ---------------------------------------------------------

    def decode_texts(self, image_features: torch.Tensor,
                     texts: Sequence[torch.Tensor]) -> list[MeldOutputs]:
        """Every query's predictions for each image's texts.

        Args:
            image_features: [B, F] from ``encode_image``.
            texts: per image, [K_i, prompt_dim] text embeddings, one class each.
        """
        if len(texts) != image_features.shape[0]:
            raise ValueError(f"decode_texts: {len(texts)} text sets for "
                             f"{image_features.shape[0]} images")
        memory, shapes, mask_features = self.unpack(image_features)
        return [self.predictor(memory[i:i + 1], shapes, mask_features[i:i + 1], emb[None],
                               spans=text_spans(emb.shape[0]))
                for i, emb in enumerate(texts)]

    def text_loss(self, outputs: Sequence[MeldOutputs], targets: Sequence[Target],
                  has_masks: Sequence[bool]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The set loss over images with their own texts (``decode_texts``), matched over all
        queries of each image. An image without masks (detection) is matched and supervised
        on class and box only. Each part is divided by the number of objects of all images,
        as one batched call would."""
        total_objects = max(1, sum(t.labels.numel() for t in targets))
        no_mask = replace(self.config.loss, mask_bce_weight=0.0, dice_weight=0.0)
        total, parts = None, {}
        for out, target, masked in zip(outputs, targets, has_masks, strict=True):
            cfg = self.config.loss if masked else no_mask
            loss, first = query_set_loss(out.all_sets(), [target], cfg)
            share = max(1, target.labels.numel()) / total_objects
            total = loss * share if total is None else total + loss * share
            for name, value in first.items():
                parts[name] = parts.get(name, 0.0) + value.detach() * share
        return total, parts

    def instances(self, outputs: MeldOutputs, input_size: tuple[int, int],
                  original_size: tuple[int, int], *, top_k: int = 100,
                  chunk: int = 16) -> list[Instance]:
        """MaskDINO's instance inference on one image's ``decode_texts`` outputs
        (:meth:`scored_pairs` on its last layer), with each query's kind."""
        final = outputs.final
        kinds = outputs.query_kinds.cpu()
        return [Instance(mask=mask, text_index=text, score=score, query_kind=int(kinds[query]))
                for query, text, score, mask in self.scored_pairs(
                    final.logits[0].detach().float().sigmoid(), final.masks[0].detach().float(),
                    input_size, original_size, top_k=top_k, chunk=chunk)]

    def scored_pairs(self, probs: torch.Tensor, mask_logits: torch.Tensor,
                     input_size: tuple[int, int], original_size: tuple[int, int], *,
                     top_k: int = 100, chunk: int = 16
                     ) -> list[tuple[int, int, float, torch.Tensor]]:
        """The ``top_k`` best (query, text) pairs of class probabilities ``probs`` [Q, K] over
        every query and text, as (query, text, score, mask at the original size), best first.
        One query may answer several texts: taking only each query's best text hands a good
        mask a wrong class (on the synthetic scenes most stuff masks were right and their best
        text another stuff's, which sank the meld's AP). A pair's score is the text's
        probability times the query's mask score, the mean mask probability inside its mask
        (logit above ``mask_threshold``; Mask2Former's); pairs with an empty mask are left out.
        Masks are upsampled ``chunk`` queries at a time, each query once."""
        values, flat = probs.flatten().topk(min(top_k, probs.numel()))
        queries, texts = flat // probs.shape[1], flat % probs.shape[1]
        wanted = sorted(set(queries.tolist()))
        found: dict[int, tuple[torch.Tensor, float]] = {}
        for start in range(0, len(wanted), chunk):
            part = wanted[start:start + chunk]
            logits = self.to_original_size(mask_logits[part], input_size, original_size)
            masks = logits > self.mask_threshold
            areas = masks.flatten(1).sum(1)
            inside = (logits.sigmoid() * masks).flatten(1).sum(1)
            for j, query in enumerate(part):
                if areas[j] > 0:
                    found[query] = (masks[j].cpu(), float(inside[j] / areas[j]))
        pairs = [(q, t, v * found[q][1], found[q][0])
                 for q, t, v in zip(queries.tolist(), texts.tolist(), values.tolist(), strict=True)
                 if q in found]
        return sorted(pairs, key=lambda pair: -pair[2])
