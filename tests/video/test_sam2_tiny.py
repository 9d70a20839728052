"""SAM2 propagation with the real ``sam2`` package (PyPI 1.1.0, which ``make`` installs): a tiny
randomly initialised SAM2 video predictor built from its own classes at 64 px (no weights, no
download), run through our adapter and through the whole video path."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from segllm import masks as rle_ops
from segllm.video.frames import open_video
from segllm.video.pipeline import VideoSegmenter
from segllm.video.propagation import Sam2Propagator
from tests.pipeline.helpers import forcing

REVOS_FRAMES = "tests/fixtures/revos/JPEGImages/vid_b"
SIDE, HIDDEN, MEMORY = 64, 32, 16  # input side, SAM2's hidden and memory widths


def _rope_attention(**extra):
    from sam2.modeling.sam.transformer import RoPEAttention

    side = SIDE // 16  # the image encoder's stride-16 feature map
    return RoPEAttention(rope_theta=10000.0, feat_sizes=[side, side], embedding_dim=HIDDEN,
                         num_heads=1, downsample_rate=1, dropout=0.0, **extra)


def tiny_sam2_predictor():
    """SAM2's video predictor at 64 px with tiny widths (650 k parameters), randomly
    initialised; SAM2.1-tiny's options but for the object-score gate, which would leave a
    random model's masks all empty."""
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
    from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
    from sam2.modeling.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    torch.manual_seed(0)
    # Hiera: 4 stages of widths 8..64; a global-attention block may not open a stage
    trunk = Hiera(embed_dim=8, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3,),
                  window_pos_embed_bkg_spatial_size=(2, 2), window_spec=(8, 4, 4, 2))
    neck = FpnNeck(position_encoding=PositionEmbeddingSine(num_pos_feats=HIDDEN, normalize=True),
                   d_model=HIDDEN, backbone_channel_list=[64, 32, 16, 8],
                   fpn_top_down_levels=[2, 3], fpn_interp_model="nearest")
    layer = MemoryAttentionLayer(
        activation="relu", dim_feedforward=64, dropout=0.0, pos_enc_at_attn=False,
        self_attention=_rope_attention(), d_model=HIDDEN, pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        cross_attention=_rope_attention(rope_k_repeat=True, kv_in_dim=MEMORY))
    memory = MemoryEncoder(
        out_dim=MEMORY, in_dim=HIDDEN,
        position_encoding=PositionEmbeddingSine(num_pos_feats=MEMORY, normalize=True),
        mask_downsampler=MaskDownSampler(embed_dim=HIDDEN, kernel_size=3, stride=2, padding=1),
        fuser=Fuser(CXBlock(dim=HIDDEN, kernel_size=7, padding=3), num_layers=1))
    return SAM2VideoPredictor(
        image_encoder=ImageEncoder(trunk=trunk, neck=neck, scalp=1),
        memory_attention=MemoryAttention(d_model=HIDDEN, pos_enc_at_input=True, layer=layer,
                                         num_layers=1),
        memory_encoder=memory, num_maskmem=3, image_size=SIDE,
        sigmoid_scale_for_mem_enc=20.0, sigmoid_bias_for_mem_enc=-10.0,
        use_mask_input_as_output_without_sam=True, directly_add_no_mem_embed=True,
        use_high_res_features_in_sam=True, multimask_output_in_sam=True,
        iou_prediction_use_sigmoid=True, use_obj_ptrs_in_encoder=True,
        add_tpos_enc_to_obj_ptrs=True, proj_tpos_enc_in_obj_ptrs=True,
        use_signed_tpos_enc_to_obj_ptrs=True, only_obj_ptrs_in_the_past_for_eval=True,
        multimask_output_for_tracking=True, use_multimask_token_for_obj_ptr=True,
        use_mlp_for_obj_ptr_proj=True, compile_image_encoder=False).eval()


@pytest.fixture(scope="module")
def predictor():
    return tiny_sam2_predictor()


def _sam2_own_run(predictor, frames, target: int, mask: np.ndarray) -> dict[int, np.ndarray]:
    """What SAM2's API gives for every frame, tracked forward then backward from ``target``."""
    out = {}
    with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
        for i in range(len(frames)):
            frames.frame(i).save(Path(folder) / f"{i:05d}.jpg", quality=95)
        state = predictor.init_state(video_path=folder)
        predictor.add_new_mask(state, frame_idx=target, obj_id=1, mask=mask)
        for reverse in (False, True):
            for index, _, logits in predictor.propagate_in_video(state, start_frame_idx=target,
                                                                 reverse=reverse):
                out.setdefault(index, (logits[0, 0] > 0).numpy())
    return out


def test_adapter_gives_sam2s_own_masks_on_every_frame(predictor):
    frames = open_video(REVOS_FRAMES)
    mask = np.zeros(frames.size, dtype=bool)
    mask[6:12, 8:16] = True
    seen = []
    masks = Sam2Propagator.from_predictor(predictor).propagate(frames, target=1,
                                                               target_mask=mask,
                                                               progress=seen.append)
    expected = _sam2_own_run(predictor, frames, 1, mask)
    assert seen == [1, 2, 3, 4] and sorted(expected) == [0, 1, 2, 3]
    decoded = [rle_ops.decode(m) for m in masks]
    assert all(m.shape == frames.size for m in decoded)
    assert np.array_equal(decoded[1], mask)  # the target keeps its own mask
    for i in (0, 2, 3):
        assert np.array_equal(decoded[i], expected[i]), i
    assert any(decoded[i].any() for i in (0, 2, 3))  # the tiny SAM2 does draw masks


def test_video_path_with_sam2_propagation(pipeline, predictor):
    frames = open_video(REVOS_FRAMES)
    segmenter = VideoSegmenter(pipeline, num_candidates=2, num_global=2, num_local=1,
                               sam2=Sam2Propagator.from_predictor(predictor),
                               generation=forcing(pipeline, "Sure, [SEG]."))
    result = segmenter.segment(frames, "the square")
    assert segmenter.propagation == "sam2" and len(result.masks) == len(frames)
    if not result.target.mask.any():
        pytest.fail("the tiny model gave an empty target mask; pick another seed")
    expected = _sam2_own_run(predictor, frames, result.target.index, result.target.mask)
    for i, rle in enumerate(result.masks):
        want = result.target.mask if i == result.target.index else expected[i]
        assert np.array_equal(rle_ops.decode(rle), want), i
    assert "propagation: sam2" in result.timings
