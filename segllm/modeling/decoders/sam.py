"""SAM as the mask decoder, built from segment_anything's own modules.

The image encoder runs once per image (``encode_image``); its features can be kept and reused
by every round. Each [SEG] becomes a sparse prompt embedding; SAM's prompt encoder supplies
its "no mask" dense embedding and positional encoding. Masks come back at the original size.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from torch import nn

from ...config import SAMConfig
from ..loading import load_state_dict_strict, read_torch_state_dict


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
        mask_decoder=MaskDecoder(
            num_multimask_outputs=cfg.num_multimask_outputs,
            transformer=TwoWayTransformer(depth=cfg.decoder_depth,
                                          embedding_dim=cfg.prompt_embed_dim,
                                          mlp_dim=cfg.decoder_mlp_dim,
                                          num_heads=cfg.decoder_num_heads),
            transformer_dim=cfg.prompt_embed_dim, iou_head_depth=3,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


class SAMDecoder(nn.Module):
    """SAM prompted by [SEG] embeddings.

    Args:
        cfg: SAM sizes.
    """

    def __init__(self, cfg: SAMConfig):
        super().__init__()
        self.cfg = cfg
        self.sam = build_sam(cfg)

    def _apply(self, fn, recurse: bool = True):
        # segment_anything builds its positional-encoding grid in float32 and multiplies it by
        # this buffer, so a half-precision buffer breaks get_dense_pe. Keep it float32 through
        # .to(bf16) / .half(); decode() casts the encoding to the image features' dtype.
        super()._apply(fn, recurse)
        pe = self.sam.prompt_encoder.pe_layer
        if pe.positional_encoding_gaussian_matrix.is_floating_point():
            pe.positional_encoding_gaussian_matrix = pe.positional_encoding_gaussian_matrix.float()
        return self

    @property
    def prompt_dim(self) -> int:
        return self.cfg.prompt_embed_dim

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    def load_sam_checkpoint(self, path: str | Path) -> None:
        """Load an original segment-anything checkpoint (e.g. ``sam_vit_h_4b8939.pth``), strictly."""
        state = read_torch_state_dict(path)
        load_state_dict_strict(self.sam, state, source=str(path))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] SAM-preprocessed images -> [B, C, S/16, S/16] image embeddings."""
        return self.sam.image_encoder(pixels)

    def decode(self, image_embedding: torch.Tensor, prompts: torch.Tensor,
               input_size: tuple[int, int], original_size: tuple[int, int]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for the prompts of one image.

        Args:
            image_embedding: [1, C, h, w] from ``encode_image``.
            prompts: [N, T, C] sparse prompt embeddings (T tokens per mask).
            input_size: (h, w) of the resized image inside the padded square.
            original_size: (H, W) of the original image.

        Returns:
            mask logits [N, H, W] at the original size, and predicted IoU scores [N].
        """
        if prompts.shape[0] == 0:
            h, w = original_size
            return image_embedding.new_zeros((0, h, w)), image_embedding.new_zeros((0,))
        pe = self.sam.prompt_encoder
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            prompts.shape[0], -1, *pe.image_embedding_size)
        low_res, iou = self.sam.mask_decoder(
            image_embeddings=image_embedding,
            image_pe=pe.get_dense_pe().to(image_embedding.dtype),
            sparse_prompt_embeddings=prompts.to(image_embedding.dtype),
            dense_prompt_embeddings=dense.to(image_embedding.dtype), multimask_output=False)
        masks = self.sam.postprocess_masks(low_res, input_size, original_size)
        return masks[:, 0], iou[:, 0]
