"""SAM as the mask decoder, built from segment_anything's own modules.

The image encoder runs once per image (``encode_image``); its features can be kept and reused
by every round. Each [SEG] becomes a sparse prompt embedding; SAM's prompt encoder supplies
its "no mask" dense embedding and positional encoding. Masks come back at the original size.

Mask-aware decoding (SegLLM feeds the referenced rounds' masks to its decoder): each [SEG] may
come with a reference mask, the union of the masks its question points at. It enters as a
dense prompt through its *own* downscaling convolutions (the layout of SAM's
``mask_downscaling``) added to SAM's "no mask" embedding, not through SAM's mask input: to a
pretrained SAM a dense mask means "this is the object to segment", while a reference usually
names a *different* object ("the shape left of <ref:0>"). The last convolution starts at zero,
so a pretrained SAM decodes exactly as before until the reference path has learned something,
and a [SEG] without references gets exactly SAM's "no mask" embedding.

Registered as ``"sam"``; its sizes are ``SAMConfig`` (``SegLLMConfig.decoder_config``), its
trainable groups ``image_encoder``, ``prompt_encoder``, ``mask_decoder`` and
``reference_encoder`` (the IoU head stays frozen: no loss supervises it). An official
checkpoint's variant (ViT-B / L / H) is read from its tensor shapes (:func:`sam_variant`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.modeling import MaskDecoder as SamMaskDecoder  # ours is .base.MaskDecoder
from torch import nn

from ...processing import resize_image
from ..loading import load_state_dict_strict
from .base import MaskDecoder


@dataclass
class SAMConfig:
    """SAM, in segment_anything's own terms (defaults: ViT-H, ``sam_vit_h_4b8939.pth``)."""

    encoder_embed_dim: int = 1280
    encoder_depth: int = 32
    encoder_num_heads: int = 16
    encoder_global_attn_indexes: tuple[int, ...] = (7, 15, 23, 31)
    encoder_mlp_ratio: float = 4.0
    window_size: int = 14
    image_size: int = 1024
    patch_size: int = 16
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3
    mask_threshold: float = 0.0
    # also add a projection of each [SEG] prompt to its dense embedding at every position (see
    # PromptToDense); for decoders trained from scratch
    dense_prompt_conditioning: bool = False


# segment_anything's sam_model_registry: the image-encoder sizes of the three official files.
# Everything else (1024 px input, 16 px patches, 14 px windows, 256-d prompts, the mask
# decoder) is the same in all three, and SAMConfig's defaults.
SAM_VARIANTS: dict[str, dict[str, Any]] = {
    "vit_b": {"encoder_embed_dim": 768, "encoder_depth": 12, "encoder_num_heads": 12,
              "encoder_global_attn_indexes": (2, 5, 8, 11)},
    "vit_l": {"encoder_embed_dim": 1024, "encoder_depth": 24, "encoder_num_heads": 16,
              "encoder_global_attn_indexes": (5, 11, 17, 23)},
    "vit_h": {"encoder_embed_dim": 1280, "encoder_depth": 32, "encoder_num_heads": 16,
              "encoder_global_attn_indexes": (7, 15, 23, 31)},
}
# config keys of the layout written before decoders were registered -> trainable group
_LEGACY_TRAINABLE = {"sam_image_encoder": "image_encoder",
                     "sam_prompt_encoder": "prompt_encoder",
                     "sam_mask_decoder": "mask_decoder",
                     "reference_mask_encoder": "reference_encoder"}
_BLOCK = re.compile(r"^image_encoder\.blocks\.(\d+)\.")


def sam_variant(state: Mapping[str, torch.Tensor]) -> str | None:
    """Which official SAM (``"vit_b"``, ``"vit_l"``, ``"vit_h"``) a state dict is, from its
    tensor shapes: the patch embedding's width, the number of blocks and the 256-d neck.
    None for anything else (a custom size, or a file missing blocks)."""
    patch = state.get("image_encoder.patch_embed.proj.weight")
    neck = state.get("image_encoder.neck.0.weight")
    if patch is None or neck is None or neck.shape[0] != SAMConfig.prompt_embed_dim:
        return None
    blocks = {int(m.group(1)) for key in state if (m := _BLOCK.match(key))}
    if blocks != set(range(len(blocks))):  # a gap: not a whole encoder
        return None
    for name, sizes in SAM_VARIANTS.items():
        if (sizes["encoder_embed_dim"], sizes["encoder_depth"]) == (patch.shape[0], len(blocks)):
            return name
    return None


def resized_size(height: int, width: int, side: int) -> tuple[int, int]:
    """Size after resizing the longest side to ``side`` (segment_anything's rounding)."""
    scale = side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


PIXEL_MEAN = (123.675, 116.28, 103.53)  # 0-255 scale, as segment_anything
PIXEL_STD = (58.395, 57.12, 57.375)


def preprocess(image: torch.Tensor, side: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 [3, H, W] -> ([3, side, side] normalised and padded bottom-right, resized (h, w)):
    segment_anything's ResizeLongestSide + Sam.preprocess."""
    h, w = resized_size(image.shape[1], image.shape[2], side)
    resized = resize_image(image.float(), (h, w))
    mean = torch.tensor(PIXEL_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=image.device).view(3, 1, 1)
    normed = (resized - mean) / std
    return F.pad(normed, (0, side - w, 0, side - h)), (h, w)


def build_sam(cfg: SAMConfig) -> Sam:
    """A segment_anything ``Sam`` with the sizes of ``cfg`` (ViT-H by default)."""
    grid = cfg.image_size // cfg.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg.encoder_depth, embed_dim=cfg.encoder_embed_dim, img_size=cfg.image_size,
            mlp_ratio=cfg.encoder_mlp_ratio, norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=cfg.encoder_num_heads, patch_size=cfg.patch_size, qkv_bias=True,
            use_rel_pos=True, global_attn_indexes=tuple(cfg.encoder_global_attn_indexes),
            window_size=cfg.window_size, out_chans=cfg.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_embed_dim, image_embedding_size=(grid, grid),
            input_image_size=(cfg.image_size, cfg.image_size), mask_in_chans=cfg.mask_in_chans,
        ),
        mask_decoder=SamMaskDecoder(
            num_multimask_outputs=cfg.num_multimask_outputs,
            transformer=TwoWayTransformer(depth=cfg.decoder_depth,
                                          embedding_dim=cfg.prompt_embed_dim,
                                          mlp_dim=cfg.decoder_mlp_dim,
                                          num_heads=cfg.decoder_num_heads),
            transformer_dim=cfg.prompt_embed_dim, iou_head_depth=3,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )


class ReferenceMaskEncoder(nn.Module):
    """A reference mask [N, 1, 4h, 4w] in {0, 1} -> dense prompt [N, C, h, w] (zero at init).

    Args:
        embed_dim: the prompt embedding size C.
        hidden_chans: channels of the intermediate layers (SAM's ``mask_in_chans``).
    """

    def __init__(self, embed_dim: int, hidden_chans: int):
        super().__init__()
        from segment_anything.modeling.common import LayerNorm2d

        first = max(4, hidden_chans // 4)  # a LayerNorm over one channel would output zeros
        self.layers = nn.Sequential(
            nn.Conv2d(1, first, kernel_size=2, stride=2),
            LayerNorm2d(first), nn.GELU(),
            nn.Conv2d(first, hidden_chans, kernel_size=2, stride=2),
            LayerNorm2d(hidden_chans), nn.GELU(),
            nn.Conv2d(hidden_chans, embed_dim, kernel_size=1),
        )
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        return self.layers(masks)


class PromptToDense(nn.Module):
    """[N, T, C] prompts -> [N, C, 1, 1]: their mean through Linear(C, C), zero at init.

    SAM's prompts reach the image only through attention with its output tokens, which a
    decoder trained from scratch is slow to learn (on synthetic scenes its masks stayed the same
    whatever the [SEG] said for the first thousand steps). Added to the dense embedding, the
    prompt reaches every image position directly, as text conditioning does in referring
    segmentation decoders. Zero at init, so a pretrained SAM decodes as before.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        return self.proj(prompts.mean(dim=1).to(self.proj.weight.dtype))[:, :, None, None]


class SAMDecoder(MaskDecoder):
    """SAM prompted by [SEG] embeddings (and, mask-aware, by the referenced masks).

    Args:
        config: SAM sizes.
        mask_aware: build the reference-mask input (see the module docstring).
    """

    config_class = SAMConfig
    trainable_defaults = {"image_encoder": False, "prompt_encoder": False, "mask_decoder": False,
                          "reference_encoder": True}
    # mask logits near the threshold are the part most sensitive to rounding, and SAM is small
    # next to the LLM (ViT-H: 641 M of 7.7 B parameters)
    keep_float32 = True

    def __init__(self, config: SAMConfig, *, mask_aware: bool = False):
        super().__init__(config, mask_aware=mask_aware)
        self.sam = build_sam(config)
        self.reference_encoder = (ReferenceMaskEncoder(config.prompt_embed_dim,
                                                       config.mask_in_chans)
                                  if mask_aware else None)
        self.prompt_to_dense = (PromptToDense(config.prompt_embed_dim)
                                if config.dense_prompt_conditioning else None)

    def _apply(self, fn, recurse: bool = True):
        # segment_anything builds its positional-encoding grid in float32 and multiplies it by
        # this buffer, so a half-precision buffer breaks get_dense_pe. Keep it float32 through
        # .to(bf16) / .half(); decode() casts the encoding to the image features' dtype.
        super()._apply(fn, recurse)
        pe = self.sam.prompt_encoder.pe_layer
        if pe.positional_encoding_gaussian_matrix.is_floating_point():
            pe.positional_encoding_gaussian_matrix = pe.positional_encoding_gaussian_matrix.float()
        return self

    # -- preprocessing -----------------------------------------------------------------------

    @classmethod
    def preprocess(cls, image: torch.Tensor, config: SAMConfig
                   ) -> tuple[torch.Tensor, tuple[int, int]]:
        return preprocess(image, config.image_size)

    @classmethod
    def resized_size(cls, height: int, width: int, config: SAMConfig) -> tuple[int, int]:
        return resized_size(height, width, config.image_size)

    @classmethod
    def describe(cls, config: SAMConfig) -> str:
        return f"ViT {config.encoder_embed_dim}d x{config.encoder_depth}, {config.image_size}px"

    # -- parts -------------------------------------------------------------------------------

    @property
    def prompt_dim(self) -> int:
        return self.config.prompt_embed_dim

    @property
    def mask_threshold(self) -> float:
        return self.config.mask_threshold

    def trainable_groups(self) -> dict[str, nn.Module]:
        groups = {"image_encoder": self.sam.image_encoder,
                  "prompt_encoder": self.sam.prompt_encoder,
                  "mask_decoder": self.sam.mask_decoder}
        if self.reference_encoder is not None:
            groups["reference_encoder"] = self.reference_encoder
        if self.prompt_to_dense is not None:  # trains with the mask decoder it feeds
            groups["mask_decoder"] = nn.ModuleList([self.sam.mask_decoder, self.prompt_to_dense])
        return groups

    def apply_trainable(self, flags: Mapping[str, bool]) -> None:
        super().apply_trainable(flags)
        # No loss supervises SAM's predicted IoU, so its head would be "trainable" without ever
        # receiving a gradient; keep it as loaded (its scores stay SAM's own estimate).
        self.sam.mask_decoder.iou_prediction_head.requires_grad_(False)

    # -- original checkpoints ----------------------------------------------------------------

    @classmethod
    def config_for_checkpoint(cls, state: Mapping[str, torch.Tensor],
                              config: SAMConfig) -> SAMConfig:
        """The official sizes when ``state`` is one of the three official files (by its shapes),
        else ``config`` (whose sizes the strict load then checks)."""
        variant = sam_variant(state)
        if variant is None:
            return config
        return replace(SAMConfig(**SAM_VARIANTS[variant]), mask_threshold=config.mask_threshold)

    def load_checkpoint(self, state: dict[str, torch.Tensor], source: str) -> None:
        """An original segment-anything state dict (e.g. ``sam_vit_h_4b8939.pth``), strictly."""
        load_state_dict_strict(self.sam, state, source=source)

    @classmethod
    def upgrade_legacy_config(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The layout written before decoders were registered: a ``sam`` section, and
        ``trainable.sam_image_encoder / sam_prompt_encoder / sam_mask_decoder /
        reference_mask_encoder``. Old names win over new ones given beside them (they come
        from overrides applied on top of a preset)."""
        if isinstance(data.get("sam"), dict):
            data["decoder_config"] = {**(data.get("decoder_config") or {}), **data.pop("sam")}
        trainable = data.get("trainable")
        if isinstance(trainable, dict):
            old = {new: trainable.pop(key) for key, new in _LEGACY_TRAINABLE.items()
                   if key in trainable}
            if old:
                trainable["decoder"] = {**(trainable.get("decoder") or {}), **old}
        return data

    # -- encoding and decoding ---------------------------------------------------------------

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] preprocessed images -> [B, C, S/16, S/16] image embeddings (computed in
        the image encoder's dtype)."""
        dtype = next(self.sam.image_encoder.parameters()).dtype
        return self.sam.image_encoder(pixels.to(dtype))

    def reference_input(self, masks: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        """[N, H, W] reference masks at the original size -> [N, 1, 4h, 4w] in SAM's frame:
        resized as the image was (longest side to ``image_size``), padded bottom-right, then
        brought to the mask-input resolution (4x the embedding grid)."""
        rh, rw = input_size
        resized = F.interpolate(masks[:, None].float(), size=(rh, rw), mode="bilinear",
                                align_corners=False)
        side = self.config.image_size
        padded = F.pad(resized, (0, side - rw, 0, side - rh))
        grid = self.sam.prompt_encoder.mask_input_size
        return F.interpolate(padded, size=grid, mode="area")

    def dense_prompts(self, num: int, ref_masks: torch.Tensor | None,
                      input_size: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """[num, C, h, w]: SAM's "no mask" embedding, plus the reference path where a [SEG]
        has a (non-empty) reference mask."""
        pe = self.sam.prompt_encoder
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            num, -1, *pe.image_embedding_size).to(dtype)
        if self.reference_encoder is None:
            return dense
        if ref_masks is None:
            ref_masks = torch.zeros((num, 1, 1), device=dense.device)
        weight = self.reference_encoder.layers[0].weight
        extra = self.reference_encoder(self.reference_input(ref_masks, input_size).to(weight.dtype))
        has_ref = ref_masks.flatten(1).any(dim=1).to(extra.dtype).view(-1, 1, 1, 1)
        # multiplied, not indexed: every [SEG] takes the same path (ZeRO-2 needs the same
        # gradient order on every process, and an unreferenced [SEG] then adds exactly zero)
        return dense + (extra * has_ref).to(dtype)

    def decode(self, image_features: torch.Tensor, prompts: torch.Tensor,
               input_size: tuple[int, int], original_size: tuple[int, int], *,
               ref_masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for the prompts of one image.

        Args:
            image_features: [1, C, h, w] from ``encode_image``.
            prompts: [N, T, C] sparse prompt embeddings (T tokens per mask).
            input_size: (h, w) of the resized image inside the padded square.
            original_size: (H, W) of the original image.
            ref_masks: [N, H, W] {0, 1} reference mask of each prompt at the original size (all
                zero: no reference); used only when the decoder is mask-aware.

        Returns:
            mask logits [N, H, W] at the original size, and predicted IoU scores [N].
        """
        if prompts.shape[0] == 0:
            h, w = original_size
            return image_features.new_zeros((0, h, w)), image_features.new_zeros((0,))
        pe = self.sam.prompt_encoder
        dense = self.dense_prompts(prompts.shape[0], ref_masks, input_size, image_features.dtype)
        if self.prompt_to_dense is not None:
            dense = dense + self.prompt_to_dense(prompts).to(dense.dtype)
        low_res, iou = self.sam.mask_decoder(
            image_embeddings=image_features,
            image_pe=pe.get_dense_pe().to(image_features.dtype),
            sparse_prompt_embeddings=prompts.to(image_features.dtype),
            dense_prompt_embeddings=dense.to(image_features.dtype), multimask_output=False)
        masks = self.sam.postprocess_masks(low_res, input_size, original_size)
        return masks[:, 0], iou[:, 0]
