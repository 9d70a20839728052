"""SegLLM's own mask decoder: a HIPIE-style R50 query decoder (``decoder: hipie``).

SegLLM swaps SAM ViT-H for HIPIE-R50 to cut training cost and keeps it frozen, prompted by the
[SEG] states. How their code (``llava/model/segmentator/hipie_utils.py``) does it, and ours:

- **[SEG] prompts replace HIPIE's text features.** ``forward_text_hack`` replaces
  ``HIPIE_IMG.forward_text``: the "captions" it receives are the [SEG] prompt embeddings,
  stacked as ``language_dict_features["hidden"]`` ([N, T, 768], 8 tokens of BERT's width) with
  an all-ones attention mask, so everything HIPIE does with text (language-guided query
  selection, cross-attention, contrastive class scores) reads the prompt tokens. Ours: the
  prompts [N, T, C] are projected to the decoder width (HIPIE's text resizer: Linear +
  LayerNorm) and used as the tokens of proposal scoring, of a cross-attention in every decoder
  layer, and of the contrastive class head (``query/transformer_decoder.py``).
- **One prompt, one decoding.** ``HIPIESementator.segment_mask`` computes the backbone once per
  image (``forward_features``) and repeats its features for every [SEG] (``img_indices``),
  running the rest per prompt. Ours runs the backbone *and the deformable encoder* once per
  image (``encode_image``; the encoder does not read the prompts here, see below) and the
  query decoder per prompt.
- **Reference masks are a second supervised class, not an input.** ``segment_mask`` stacks
  ``prev_masks`` and ``targets``; a [SEG] with a reference gets two ground-truth instances,
  class 1 (the reference, positive map: the first half of the prompt tokens) and class 2 (the
  target, the second half); without one, only class 2. At inference the query with the best
  target-class score is the answer (reference-class predictions are suppressed). Ours, with
  ``mask_aware_decoding``: the same two classes over the same token halves
  (``class_token_spans``), the reference (the union of the masks the question references) a
  second target in ``training_loss``, and ``decode`` returns the best target-class query.
  ``ref_masks`` are not read by ``decode``.
- **Losses.** HIPIE's criterion (matching, focal class, L1 + GIoU box, point-sampled BCE +
  Dice mask, deep supervision) times its weights, plus ``sparse_embed_L2_loss_weight`` (1e-3)
  times the mean squared prompt embedding: ``training_loss``, weights in
  ``HIPIEConfig.loss``.
- **The IoU branch** (``iou_branch``; SegLLM's ``r50.yaml`` sets ``USE_IOU_BRANCH: True``):
  HIPIE's ``iou_head`` (a ``Linear(d, 1)`` per decoder layer) predicts each query's box IoU
  with its object, trained with BCE against the matched box's actual IoU (``loss_boxiou``,
  weight 1); at inference ``HIPIE_IMG.inference`` scores queries by
  ``sqrt(p_class * p_iou)`` and ``segment_mask`` keeps the best target-class one. Ours the same
  (``query.transformer_decoder.answer_scores``); the released ``iou_head`` weights load.
- **Inference computes only the answer.** Training needs every query's masks of every layer
  (the set loss matches them all): ``decode_for_training``. ``decode`` asks the query decoder
  for ``best_answer``: class and IoU scores of the last layer, and one mask per [SEG] (SegLLM's
  code also keeps only ``pred_masks[best_mask_idx]``). At 1024 px that is 80 MB of peak memory
  per [SEG] instead of 217 MB (``bench/bench_hipie.py --memory``).

Reproduced from HIPIE-R50 (``HIPIE_IMG`` with its ``DeformableDETRDINO`` thing decoder): the
ResNet-50 with frozen BN, the multi-scale deformable encoder (``MSDeformAttn`` semantics, in
``grid_sample``), two-stage proposal selection scored against the text (= prompt) tokens, the
text resizer, text cross-attention and contrastive class scores, per-layer box refinement,
deep supervision, the matcher and criterion with r50.yaml's weights, the IoU branch.

Not reproduced, and why:

- early vision-language fusion in the encoder (``vl_layers`` / ``lang_layers``): with it the
  encoder reads the prompts, so the image could no longer be encoded once and reused across
  rounds and [SEG]s (our ``encode_image`` / ``decode`` split); SegLLM's prompts are [SEG]
  states, not BERT features, so fusion weights trained on BERT would not transfer anyway;
- the decoupled background ("stuff") decoder (``detr.mask_dino*``): SegLLM's targets are single
  objects decoded by the thing decoder (``MASKDINO.ENABLED`` is set off in ``setup_cfg``);
- denoising queries (``DN_NUMBER``), mixed query selection's learned contents (``tgt_embed``)
  and look-forward-twice: training-speed devices of DINO for a decoder SegLLM keeps frozen;
  ours starts queries from the proposals' contents and refines boxes looking forward once;
- HIPIE's mask head: CondInst dynamic convolutions (``controller``, ``mask_head``) where ours is
  MaskDINO's query . per-pixel embedding (a HIPIE file cannot fill our ``mask_embed`` and mask
  features: converted weights are a warm start, not HIPIE's outputs);
- padding masks (the padded 1024 square is encoded whole) and bf16 autocast of the backbone.

HIPIE's released checkpoints load through ``load_checkpoint`` (``hipie_checkpoint``: every key
converted or dropped for a stated reason).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, masks_to_boxes

from ...processing import resize_image
from ..loading import read_torch_state_dict
from .base import MaskDecoder, MaskLoss
from .hipie_checkpoint import ConvertedHIPIE, convert_hipie_state
from .query import (
    DecoderOutputs,
    PixelDecoder,
    Predictions,
    QueryDecoder,
    QueryLossConfig,
    ResNetBackbone,
    Target,
    query_set_loss,
)
from .query.transformer_decoder import (
    REFERENCE_CLASS,
    TARGET_CLASS,
    QueryStrategy,
    answer_scores,
)
from .sam import PIXEL_MEAN, PIXEL_STD, resized_size

logger = logging.getLogger(__name__)


@dataclass
class HIPIEConfig:
    """Sizes and loss weights. Defaults: HIPIE's R50 (SegLLM's
    ``hipie_configs/training/r50.yaml``: 100 queries, 100 proposals) on the MaskDINO config it
    names (``maskdino_R50_bs16_50ep_3s_dowsample1_2048.yaml``: 256 wide, 8 heads, 6 encoder
    layers over res3-res5 plus one downsampled level, FFN 2048, 6 decoder layers as HIPIE-R50)."""

    image_size: int = 1024  # SegLLM: ResizeLongestSide(1024), padded square
    backbone_block: Literal["bottleneck", "basic"] = "bottleneck"
    backbone_layers: tuple[int, int, int, int] = (3, 4, 6, 3)  # ResNet-50
    hidden_dim: int = 256
    mask_dim: int = 256
    prompt_dim: int = 768  # SegLLM: 8 prompt tokens of 768 (HIPIE's BERT width)
    encoder_layers: int = 6
    encoder_ffn_dim: int = 2048
    extra_levels: int = 1  # "3s_dowsample1": res3-res5 plus one stride-64 level
    decoder_layers: int = 6  # HIPIE-R50 (r50.yaml DEC_LAYERS); MaskDINO R50 uses 9
    decoder_ffn_dim: int = 2048
    num_heads: int = 8
    num_points: int = 4
    num_queries: int = 100  # DDETRS.NUM_OBJECT_QUERIES (learnable queries)
    num_proposals: int = 100  # DDETRS.TWO_STAGE_NUM_PROPOSALS (top-k encoder proposals)
    query_strategy: QueryStrategy = "conditional"
    iou_branch: bool = True  # r50.yaml MODEL.USE_IOU_BRANCH
    mask_threshold: float = 0.0
    loss: QueryLossConfig = field(default_factory=QueryLossConfig)


@dataclass
class HIPIEExtras:
    """What ``training_loss`` needs of one image's decoding."""

    outputs: DecoderOutputs
    prompts: torch.Tensor
    input_size: tuple[int, int]


def feature_shapes(side: int, extra_levels: int
                   ) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """(h, w) of the encoder levels (strides 8, 16, 32, then 64, ... for the extra levels) and
    of the mask features (stride 4)."""
    strides = [8 * 2 ** level for level in range(3 + extra_levels)]
    return [(side // s, side // s) for s in strides], (side // 4, side // 4)


def to_input_frame(masks: torch.Tensor, input_size: tuple[int, int], side: int) -> torch.Tensor:
    """[G, H, W] masks at the original size -> [G, side, side] {0, 1} in the decoder's frame
    (resized as the image was, padded bottom-right)."""
    h, w = input_size
    resized = F.interpolate(masks[:, None].float(), size=(h, w), mode="bilinear",
                            align_corners=False)[:, 0] > 0.5
    return F.pad(resized.float(), (0, side - w, 0, side - h))


def frame_boxes(masks: torch.Tensor) -> torch.Tensor:
    """[G, S, S] non-empty masks -> [G, 4] (cx, cy, w, h) in [0, 1], pixel edges included."""
    xyxy = masks_to_boxes(masks.bool()).float()
    xyxy[:, 2:] += 1
    return box_convert(xyxy / masks.shape[-1], "xyxy", "cxcywh")


class HIPIEDecoder(MaskDecoder):
    """The HIPIE-style decoder prompted by [SEG] embeddings.

    Args:
        config: sizes and loss weights.
        mask_aware: supervise each [SEG]'s referenced masks as a second class (SegLLM's way).
    """

    config_class = HIPIEConfig
    # SegLLM trains with HIPIE frozen; the prompts learn to drive it
    trainable_defaults = {"backbone": False, "pixel_decoder": False, "mask_decoder": False}
    keep_float32 = True  # grid_sample offsets and mask logits near the threshold

    def __init__(self, config: HIPIEConfig, *, mask_aware: bool = False):
        super().__init__(config, mask_aware=mask_aware)
        coarsest = 32 * 2 ** config.extra_levels
        if config.image_size % coarsest:
            raise ValueError(f"decoder_config.image_size: {config.image_size} is not a multiple "
                             f"of {coarsest} (the coarsest feature level's stride)")
        self.backbone = ResNetBackbone(block=config.backbone_block,
                                       layers=tuple(config.backbone_layers))
        self.pixel_decoder = PixelDecoder(
            self.backbone.channels, dim=config.hidden_dim, mask_dim=config.mask_dim,
            layers=config.encoder_layers, ffn_dim=config.encoder_ffn_dim,
            heads=config.num_heads, points=config.num_points, extra_levels=config.extra_levels)
        self.predictor = self.build_predictor(config, mask_aware=mask_aware)

    @classmethod
    def build_predictor(cls, config: HIPIEConfig, *, mask_aware: bool) -> nn.Module:
        """The query decoder over the encoder memory (a subclass may build another one)."""
        return QueryDecoder(
            dim=config.hidden_dim, prompt_dim=config.prompt_dim, mask_dim=config.mask_dim,
            num_classes=2 if mask_aware else 1, layers=config.decoder_layers,
            ffn_dim=config.decoder_ffn_dim, heads=config.num_heads, points=config.num_points,
            levels=3 + config.extra_levels, num_queries=config.num_queries, num_proposals=config.num_proposals,
            query_strategy=config.query_strategy, iou_branch=config.iou_branch)

    # -- preprocessing -----------------------------------------------------------------------

    @classmethod
    def preprocess(cls, image: torch.Tensor, config: HIPIEConfig
                   ) -> tuple[torch.Tensor, tuple[int, int]]:
        """SegLLM's ``Preprocessor`` + HIPIE's normaliser: longest side to ``image_size``,
        padded bottom-right with zeros, *then* normalised (so padding reads -mean / std)."""
        side = config.image_size
        h, w = resized_size(image.shape[1], image.shape[2], side)
        padded = F.pad(resize_image(image.float(), (h, w)), (0, side - w, 0, side - h))
        mean = torch.tensor(PIXEL_MEAN, device=image.device).view(3, 1, 1)
        std = torch.tensor(PIXEL_STD, device=image.device).view(3, 1, 1)
        return (padded - mean) / std, (h, w)

    @classmethod
    def resized_size(cls, height: int, width: int, config: HIPIEConfig) -> tuple[int, int]:
        return resized_size(height, width, config.image_size)

    @classmethod
    def describe(cls, config: HIPIEConfig) -> str:
        depth = {"bottleneck": 3, "basic": 2}[config.backbone_block] * sum(
            config.backbone_layers) + 2
        return (f"HIPIE-style R{depth} ({config.backbone_block}), "
                f"{config.encoder_layers} enc / {config.decoder_layers} dec layers, "
                f"{config.hidden_dim}d, queries {config.query_strategy}, {config.image_size}px")

    @classmethod
    def describe_loss(cls, config: HIPIEConfig, weights: Any) -> str:
        w = config.loss
        return (f"set loss (decoder_config.loss): focal class x{w.class_weight}, "
                f"L1 x{w.box_l1_weight} + GIoU x{w.giou_weight}, point BCE "
                f"x{w.mask_bce_weight} + Dice x{w.dice_weight}"
                + (f", box-IoU BCE x{w.box_iou_weight}"
                   if getattr(config, "iou_branch", False) else "")
                + (", every layer" if w.deep_supervision else ""))

    # -- original checkpoints ----------------------------------------------------------------

    @classmethod
    def read_checkpoint(cls, path: str | Path) -> dict[str, torch.Tensor]:
        """The tensors of a HIPIE checkpoint (detectron2's ``{"model": ...}`` or bare),
        read with ``weights_only=True``."""
        return read_torch_state_dict(path, wrappers=("model",))

    @classmethod
    def config_for_checkpoint(cls, state: Mapping[str, torch.Tensor],
                              config: HIPIEConfig) -> HIPIEConfig:
        """The layer counts, widths, levels and proposals a HIPIE checkpoint was trained with
        (HIPIE-R50's thing decoder has 6 decoder layers, as our preset); ``config``
        when ``state`` is not in HIPIE's layout."""
        level_embed = state.get("detr.detr.transformer.level_embed")
        if level_embed is None:
            return config

        def layers(prefix: str) -> int:
            found = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
            return max(found) + 1 if found else 0

        sizes: dict[str, Any] = {
            "hidden_dim": level_embed.shape[1], "extra_levels": level_embed.shape[0] - 3,
            "encoder_layers": layers("detr.detr.transformer.encoder.layers."),
            "decoder_layers": layers("detr.detr.transformer.decoder.layers.")}
        for part in ("encoder", "decoder"):
            ffn = state.get(f"detr.detr.transformer.{part}.layers.0.linear1.weight")
            if ffn is not None:
                sizes[f"{part}_ffn_dim"] = ffn.shape[0]
        resizer = state.get("detr.detr.transformer.resizer.fc.weight")
        if resizer is not None:
            sizes["prompt_dim"] = resizer.shape[1]
        queries = state.get("detr.detr.transformer.tgt_embed.weight")
        if queries is not None:  # mixed selection's contents: one per proposal
            sizes["num_proposals"] = queries.shape[0]
        sizes["iou_branch"] = any(k.startswith("detr.detr.iou_head.") for k in state)
        return replace(config, **sizes)

    def load_checkpoint(self, state: dict[str, torch.Tensor], source: str) -> ConvertedHIPIE:
        """A HIPIE checkpoint, converted key by key (``hipie_checkpoint``): every tensor is
        loaded or dropped for a stated reason, an unknown key is an error; our parts HIPIE has
        no weights for keep their initialisation and are listed in the result's
        ``unfilled``."""
        converted = convert_hipie_state(state, self.state_dict(),
                                        decoder_layers=self.config.decoder_layers, source=source)
        self.load_state_dict(converted.state, strict=False)
        parts = sorted({key.rsplit(".", 1)[0] for key in converted.unfilled})
        logger.warning("%s: %d tensors loaded, %d dropped; %d of ours keep their "
                       "initialisation (%s)", source, len(converted.state),
                       len(converted.dropped), len(converted.unfilled), ", ".join(parts[:6])
                       + (", ..." if len(parts) > 6 else ""))
        return converted

    # -- parts -------------------------------------------------------------------------------

    @property
    def prompt_dim(self) -> int:
        return self.config.prompt_dim

    @property
    def mask_threshold(self) -> float:
        return self.config.mask_threshold

    def trainable_groups(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "pixel_decoder": self.pixel_decoder,
                "mask_decoder": self.predictor}

    # -- encoding and decoding ---------------------------------------------------------------

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, F]: the encoder memory and the mask features, flattened and
        concatenated (one tensor, so callers can keep and slice it like any feature map)."""
        dtype = self.pixel_decoder.level_embed.dtype
        memory, _, mask_features = self.pixel_decoder(self.backbone(pixels.to(dtype)))
        return torch.cat([memory.flatten(1), mask_features.flatten(1)], dim=1)

    def unpack(self, features: torch.Tensor
               ) -> tuple[torch.Tensor, list[tuple[int, int]], torch.Tensor]:
        """``encode_image``'s [B, F] -> (memory [B, S, d], level shapes, mask features)."""
        shapes, (mh, mw) = feature_shapes(self.config.image_size, self.config.extra_levels)
        tokens = sum(h * w for h, w in shapes)
        d, md = self.config.hidden_dim, self.config.mask_dim
        memory, masks = features.split([tokens * d, md * mh * mw], dim=1)
        return memory.view(-1, tokens, d), shapes, masks.view(-1, md, mh, mw)

    def run(self, image_features: torch.Tensor, prompts: torch.Tensor) -> DecoderOutputs:
        """Every query's predictions for N prompts over one image ([1, F] features)."""
        memory, shapes, mask_features = self.unpack(image_features)
        n = prompts.shape[0]
        return self.predictor(memory.expand(n, -1, -1), shapes,
                              mask_features.expand(n, -1, -1, -1), prompts)

    def answer(self, outputs: DecoderOutputs, input_size: tuple[int, int],
               original_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The best target-class query of each prompt among every query's predictions (the
        training path's outputs): (mask logits [N, H, W] at the original size, its class
        probability [N])."""
        final = outputs.final
        scores = answer_scores(final.logits, final.ious, TARGET_CLASS)
        best = scores.argmax(dim=1)
        rows = torch.arange(best.shape[0], device=best.device)
        return (self.to_original_size(final.masks[rows, best], input_size, original_size),
                scores[rows, best].to(final.masks.dtype))

    def to_original_size(self, masks: torch.Tensor, input_size: tuple[int, int],
                         original_size: tuple[int, int]) -> torch.Tensor:
        """[N, h4, w4] mask logits at 1/4 of the padded input -> [N, H, W] at the image's
        size (up to the input, padding cropped, resized as the image was)."""
        side = self.config.image_size
        masks = F.interpolate(masks[:, None], size=(side, side), mode="bilinear",
                              align_corners=False)
        h, w = input_size
        return F.interpolate(masks[..., :h, :w], size=original_size, mode="bilinear",
                             align_corners=False)[:, 0]

    def decode(self, image_features: torch.Tensor, prompts: torch.Tensor,
               input_size: tuple[int, int], original_size: tuple[int, int], *,
               ref_masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for the prompts of one image (``ref_masks`` are a training target here, not
        an input: see the module docstring). Only the answer is computed: the best
        target-class query's mask, not every query's of every layer (a predictor without
        ``best_answer`` computes them all and the best is taken)."""
        if prompts.shape[0] == 0 or not hasattr(self.predictor, "best_answer"):
            logits, scores, _ = self.decode_for_training(image_features, prompts, input_size,
                                                         original_size, ref_masks=ref_masks)
            return logits, scores
        memory, shapes, mask_features = self.unpack(image_features)
        n = prompts.shape[0]
        found = self.predictor.best_answer(memory.expand(n, -1, -1), shapes,
                                           mask_features.expand(n, -1, -1, -1), prompts,
                                           class_index=TARGET_CLASS)
        masks = self.to_original_size(found.masks, input_size, original_size)
        return masks, found.scores.to(masks.dtype)

    def decode_for_training(self, image_features: torch.Tensor, prompts: torch.Tensor,
                            input_size: tuple[int, int], original_size: tuple[int, int], *,
                            ref_masks: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor, HIPIEExtras | None]:
        if prompts.shape[0] == 0:
            h, w = original_size
            return image_features.new_zeros((0, h, w)), image_features.new_zeros((0,)), None
        outputs = self.run(image_features, prompts)
        logits, scores = self.answer(outputs, input_size, original_size)
        return logits, scores, HIPIEExtras(outputs=outputs, prompts=prompts,
                                           input_size=tuple(input_size))

    # -- training ----------------------------------------------------------------------------

    def prompt_targets(self, targets: torch.Tensor, refs: torch.Tensor | None,
                       input_size: tuple[int, int]) -> list[Target]:
        """One ``Target`` per [SEG]: its mask (class target) and, mask-aware, its non-empty
        reference union (class reference); empty masks are no object."""
        side = self.config.image_size
        frame = to_input_frame(targets, input_size, side)
        ref_frame = (to_input_frame(refs, input_size, side)
                     if self.mask_aware and refs is not None else None)
        out = []
        for k in range(frame.shape[0]):
            masks, labels = [], []
            for mask, label in ((frame[k], TARGET_CLASS),
                                (ref_frame[k] if ref_frame is not None else None,
                                 REFERENCE_CLASS)):
                if mask is not None and mask.any():
                    masks.append(mask)
                    labels.append(label)
            stacked = (torch.stack(masks) if masks
                       else frame.new_zeros((0, side, side)))
            out.append(Target(labels=torch.tensor(labels, dtype=torch.long,
                                                  device=frame.device),
                              boxes=(frame_boxes(stacked) if masks
                                     else frame.new_zeros((0, 4))),
                              masks=stacked))
        return out

    def training_loss(self, *, mask_logits: list[torch.Tensor], targets: list[torch.Tensor],
                      target_weights: list[torch.Tensor] | None,
                      ref_masks: list[torch.Tensor] | None, extras: list[Any],
                      weights: Any) -> MaskLoss:
        """HIPIE's set loss over every [SEG] of the batch (``weights``, the model's
        ``LossConfig``, is not read: the weights are ``decoder_config.loss``). A [SEG] whose
        target has weight 0 (a mask filled from a box) is left out of it."""
        cfg = self.config.loss
        sets: list[list[Predictions]] = []
        all_targets: list[Target] = []
        prompts, kept = [], []
        for i, extra in enumerate(extras):
            if extra is None:
                continue
            refs = ref_masks[i] if ref_masks is not None else None
            all_targets += self.prompt_targets(targets[i], refs, extra.input_size)
            sets.append(extra.outputs.all_sets())
            prompts.append(extra.prompts)
            kept.append(target_weights[i].to(extra.prompts.device) > 0
                        if target_weights is not None
                        else torch.ones(extra.prompts.shape[0], dtype=torch.bool,
                                        device=extra.prompts.device))
        if not sets:
            zero = (mask_logits[0].new_zeros(()) if mask_logits else torch.zeros(())).float()
            return MaskLoss(total=zero, bce=zero, dice=zero, num_masks=0)
        keep = torch.cat(kept)
        all_targets = [t for t, k in zip(all_targets, keep.tolist(), strict=True) if k]
        merged = [Predictions(logits=torch.cat([s[j].logits for s in sets])[keep],
                              boxes=torch.cat([s[j].boxes for s in sets])[keep],
                              masks=torch.cat([s[j].masks for s in sets])[keep],
                              ious=(None if sets[0][j].ious is None
                                    else torch.cat([s[j].ious for s in sets])[keep]))
                  for j in range(len(sets[0]))]
        total, parts = query_set_loss(merged, all_targets, cfg)
        total = total + cfg.prompt_l2_weight * torch.cat(prompts).float().pow(2).mean()
        return MaskLoss(total=total, bce=parts["mask_bce"], dice=parts["dice"],
                        num_masks=len(all_targets), parts=parts)
