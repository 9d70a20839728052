"""SAM's sizes read from a SAM state dict's tensor shapes (any size, not just the official three).

Everything ``SAMConfig`` holds can be read from shapes except the mask decoder's number of
attention heads, which leaves no trace in them; it is 8 in every published SAM and in the
builders of LISA and GLaMM (``TwoWayTransformer(num_heads=8)``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..modeling.decoders.sam import SAMConfig
from .source import ConvertError

SAM_DECODER_HEADS = 8
_BLOCK = re.compile(r"^image_encoder\.blocks\.(\d+)\.")
_LAYER = re.compile(r"^mask_decoder\.transformer\.layers\.(\d+)\.")


def _count(pattern: re.Pattern, keys) -> int:
    return len({int(m.group(1)) for k in keys if (m := pattern.match(k))})


def sam_config_from_shapes(shapes: Mapping[str, torch.Size], source: str) -> SAMConfig:
    """``SAMConfig`` for a SAM whose tensors (keys as in segment_anything's ``Sam``) have these
    shapes."""
    def shape(key: str) -> torch.Size:
        if key not in shapes:
            raise ConvertError(f"{source}: the SAM weights have no {key!r}")
        return shapes[key]

    embed, _, patch, _ = shape("image_encoder.patch_embed.proj.weight")
    grid = shape("image_encoder.pos_embed")[1]
    depth = _count(_BLOCK, shapes)
    window, global_blocks, head_dim = None, [], None
    for i in range(depth):
        span, head_dim = shape(f"image_encoder.blocks.{i}.attn.rel_pos_h")
        side = (span + 1) // 2
        if side == grid:
            global_blocks.append(i)
        elif window is None or window == side:
            window = side
        else:
            raise ConvertError(f"{source}: image-encoder blocks with two window sizes "
                               f"({window} and {side})")
    prompt_dim = shape("image_encoder.neck.0.weight")[0]
    return SAMConfig(
        encoder_embed_dim=int(embed), encoder_depth=depth,
        encoder_num_heads=int(embed // head_dim),
        encoder_global_attn_indexes=tuple(global_blocks),
        encoder_mlp_ratio=shape("image_encoder.blocks.0.mlp.lin1.weight")[0] / embed,
        window_size=int(window if window is not None else grid),
        image_size=int(grid * patch), patch_size=int(patch), prompt_embed_dim=int(prompt_dim),
        mask_in_chans=int(shape("prompt_encoder.mask_downscaling.3.weight")[0]),
        decoder_depth=_count(_LAYER, shapes),
        decoder_mlp_dim=int(shape("mask_decoder.transformer.layers.0.mlp.lin1.weight")[0]),
        decoder_num_heads=SAM_DECODER_HEADS,
        iou_head_hidden_dim=int(shape("mask_decoder.iou_prediction_head.layers.0.weight")[0]),
        num_multimask_outputs=int(shape("mask_decoder.mask_tokens.weight")[0] - 1),
    )
