"""Reading HIPIE's released checkpoints (``berkeley-hipie/HIPIE``, R50) into ``HIPIEDecoder``.

HIPIE's image model (``HIPIE_IMG``) keeps its thing decoder under ``detr.detr.`` (a
``DeformableDETRDINO``: detectron2 ResNet under ``backbone.0.backbone.``, ``input_proj``, the
``DeformableTransformerVLDINO`` under ``transformer.``, per-layer ``class_embed`` /
``bbox_embed`` clones), its CondInst mask head under ``detr.`` (``controller``, ``mask_head``),
its stuff decoder under ``detr.mask_dino.`` and BERT under ``text_encoder.``. Detectron2 saves
``{"model": state_dict, ...}``; either that or the bare state dict is accepted.

Every source key is either renamed to one of ours (``RENAMES``) or dropped for a stated
reason (``DROPPED``); any other key is an error naming it. HIPIE's thing decoder shares our
skeleton (backbone, deformable encoder, two-stage deformable decoder, box refinement, prompt
resizer); the parts where the two differ are not in the file and keep their initialisation:
the 1/4-scale mask features and ``mask_embed`` (HIPIE predicts masks with CondInst dynamic
convolutions), the prompt cross-attention of each decoder layer (HIPIE fuses text in the
encoder instead), ``decoder_norm`` and the class head (HIPIE's ``VL_Align`` projects the
768-d text, ours the queries). ``convert_hipie_state`` returns them as ``unfilled``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..loading import CheckpointError

_D2 = r"detr\.detr\.backbone\.0\.backbone\."
_BN = r"(weight|bias|running_mean|running_var)"
_WB = r"(weight|bias)"
_ATTN = r"(?:sampling_offsets|attention_weights|value_proj|output_proj)"

# (their key pattern, our key template). The backbone differs only in detectron2's names
# for torchvision's modules; the rest already follows Deformable-DETR's names as theirs do.
RENAMES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(f"^{pattern}$"), template) for pattern, template in (
        (_D2 + r"stem\.conv1\.weight", r"backbone.stem.0.weight"),
        (_D2 + r"stem\.conv1\.norm\." + _BN, r"backbone.stem.1.\1"),
        (_D2 + r"(res[2-5])\.(\d+)\.conv([1-3])\.weight", r"backbone.\1.\2.conv\3.weight"),
        (_D2 + r"(res[2-5])\.(\d+)\.conv([1-3])\.norm\." + _BN, r"backbone.\1.\2.bn\3.\4"),
        (_D2 + r"(res[2-5])\.(\d+)\.shortcut\.weight", r"backbone.\1.\2.downsample.0.weight"),
        (_D2 + r"(res[2-5])\.(\d+)\.shortcut\.norm\." + _BN, r"backbone.\1.\2.downsample.1.\3"),
        (r"detr\.detr\.input_proj\.(\d+)\.([01])\." + _WB, r"pixel_decoder.input_proj.\1.\2.\3"),
        (r"detr\.detr\.transformer\.level_embed", r"pixel_decoder.level_embed"),
        (r"detr\.detr\.transformer\.encoder\.layers\.(\d+)\.((?:self_attn\." + _ATTN
         + r")|norm1|norm2|linear1|linear2)\." + _WB, r"pixel_decoder.encoder.\1.\2.\3"),
        (r"detr\.detr\.transformer\.decoder\.layers\.(\d+)\.((?:cross_attn\." + _ATTN
         + r")|self_attn\.out_proj|norm1|norm2|norm3|linear1|linear2)\." + _WB,
         r"predictor.layers.\1.\2.\3"),
        (r"detr\.detr\.transformer\.decoder\.layers\.(\d+)\.self_attn\.in_proj_" + _WB,
         r"predictor.layers.\1.self_attn.in_proj_\2"),
        (r"detr\.detr\.transformer\.decoder\.ref_point_head\.layers\.([01])\." + _WB,
         r"predictor.ref_point_head.layers.\1.\2"),
        (r"detr\.detr\.transformer\.enc_output(_norm)?\." + _WB, r"predictor.enc_output\1.\2"),
        # the prompt resizer: HIPIE's FeatureResizer (Linear 768 -> 256, LayerNorm eps 1e-12)
        (r"detr\.detr\.transformer\.resizer\.fc\." + _WB, r"predictor.prompt_proj.0.\1"),
        (r"detr\.detr\.transformer\.resizer\.layer_norm\." + _WB, r"predictor.prompt_proj.1.\1"),
        # the IoU branch: one Linear(d, 1) per decoder layer, as ours
        (r"detr\.detr\.iou_head\.(\d+)\." + _WB, r"predictor.iou_embed.\1.\2"),
    ))

# HIPIE clones the box head per prediction (decoder layers, then the encoder proposals); ours
# shares one across layers as MaskDINO does: the last decoder layer's is taken.
_BOX_HEAD = re.compile(r"^detr\.detr\.bbox_embed\.(\d+)\.layers\.([0-2])\.(weight|bias)$")

# (their key prefix, why it is dropped)
DROPPED: tuple[tuple[str, str], ...] = (
    ("detr.detr.transformer.decoder.bbox_embed.",
     "the same modules as detr.detr.bbox_embed (registered twice)"),
    ("detr.detr.transformer.decoder.class_embed.",
     "the same modules as detr.detr.class_embed (registered twice)"),
    ("detr.detr.class_embed.",
     "VL_Align projects the 768-d text features; our class head projects the queries"),
    ("detr.detr.transformer.encoder.vl_layers.",
     "early vision-language fusion in the encoder is not reproduced"),
    ("detr.detr.transformer.encoder.lang_layers.",
     "early vision-language fusion in the encoder is not reproduced"),
    ("detr.detr.transformer.tgt_embed.",
     "mixed query selection's learned contents; our queries start from the proposals'"),
    ("detr.detr.transformer.tgt_embed_bg.", "the stuff decoder's queries"),
    ("detr.detr.transformer.bg_query_refs.", "the stuff decoder's queries"),
    ("detr.detr.transformer.reference_points.", "one-stage reference points (unused two-stage)"),
    ("detr.controller.", "CondInst dynamic mask head; our masks are query . pixel embedding"),
    ("detr.mask_head.", "CondInst dynamic mask head; our masks are query . pixel embedding"),
    ("detr.resizer.", "denoising queries' label encoding is not reproduced"),
    ("detr.label_enc.", "denoising queries' label encoding is not reproduced"),
    ("detr.mask_dino.", "the decoupled stuff (background) decoder is not reproduced"),
    ("detr.mask_dino_cls_embed.", "the decoupled stuff (background) decoder's class heads"),
    ("text_encoder.", "BERT: the [SEG] prompts replace the text features"),
)


@dataclass
class ConvertedHIPIE:
    """``state``: our keys -> tensors; ``dropped``: their key -> reason; ``unfilled``: our keys
    the file has no weights for (they keep their initialisation)."""

    state: dict[str, torch.Tensor]
    dropped: dict[str, str]
    unfilled: list[str]


def model_state(checkpoint: Mapping[str, object]) -> Mapping[str, torch.Tensor]:
    """The state dict of a detectron2 checkpoint (``{"model": ...}``) or a bare one."""
    inner = checkpoint.get("model")
    return inner if isinstance(inner, Mapping) else checkpoint  # type: ignore[return-value]


def our_key(key: str, *, decoder_layers: int) -> str | None:
    """Our name for their ``key``; None when the key is one of the box-head clones we drop."""
    box = _BOX_HEAD.match(key)
    if box is not None:
        if int(box.group(1)) != decoder_layers - 1:
            return None
        return f"predictor.bbox_embed.layers.{box.group(2)}.{box.group(3)}"
    for pattern, template in RENAMES:
        if pattern.match(key):
            return pattern.sub(template, key)
    raise KeyError(key)


def convert_hipie_state(checkpoint: Mapping[str, object], ours: Mapping[str, torch.Tensor],
                        *, decoder_layers: int, source: str) -> ConvertedHIPIE:
    """Map a HIPIE checkpoint onto ``ours`` (a ``HIPIEDecoder`` state dict, for names and
    shapes). Raises ``CheckpointError`` naming the first unknown key, a key with no place in
    our model (e.g. more layers than ours), or a shape mismatch."""
    state: dict[str, torch.Tensor] = {}
    dropped: dict[str, str] = {}
    for key, tensor in model_state(checkpoint).items():
        reason = next((why for prefix, why in DROPPED if key.startswith(prefix)), None)
        if reason is not None:
            dropped[key] = reason
            continue
        try:
            name = our_key(key, decoder_layers=decoder_layers)
        except KeyError:
            raise CheckpointError(f"{source}: unknown HIPIE key {key!r}") from None
        if name is None:
            dropped[key] = ("a per-layer box head clone; ours shares one (the last decoder "
                            "layer's is kept)")
            continue
        if name not in ours:
            raise CheckpointError(f"{source}: {key!r} maps to {name!r}, which this decoder "
                                  "does not have (its sizes differ from the checkpoint's)")
        if tuple(tensor.shape) != tuple(ours[name].shape):
            raise CheckpointError(f"{source}: {key!r} has shape {tuple(tensor.shape)}, "
                                  f"{name!r} {tuple(ours[name].shape)}")
        state[name] = tensor
    unfilled = sorted(set(ours) - set(state))
    return ConvertedHIPIE(state=state, dropped=dropped, unfilled=unfilled)
