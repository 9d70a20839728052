"""Real-size presets on the meta device: shapes and parameter counts without memory."""

import pytest
import torch

from segllm.config import SegLLMConfig
from segllm.modeling.model import SegLLMModel


@pytest.fixture(scope="module")
def counts():
    out = {}
    for name in ("segllm-7b", "lisa-7b"):
        with torch.device("meta"):
            model = SegLLMModel.from_config(SegLLMConfig.from_name(name))
        out[name] = model.parameter_counts()
    return out


def llava_total(rows):
    return sum(rows[k]["total"] for k in ("vision_tower", "projector", "language_model", "lm_head"))


def sam_total(rows):
    return sum(rows[k]["total"] for k in ("sam_image_encoder", "sam_prompt_encoder", "sam_mask_decoder"))


def test_segllm_7b_counts(counts):
    rows = counts["segllm-7b"]
    # LLaVA-1.5-7B (llava-hf, vocab 32064): 7.063 B; CLIP ViT-L/14-336: 303.5 M
    assert llava_total(rows) == 7_063_427_072
    assert rows["vision_tower"]["total"] == 303_507_456
    assert rows["projector"]["total"] == 20_979_712  # 1024*4096 + 4096 + 4096*4096 + 4096
    assert sam_total(rows) == 641_090_608  # SAM ViT-H
    assert rows["seg_head"]["total"] == 4096 * 4096 + 4096 + 4096 * 256 + 256
    assert rows["mask_encoder_box"]["total"] == 4 * 4096 + 4096
    # mask-aware decoding: the reference-mask convolutions (SAM's mask_downscaling layout,
    # 1 -> 4 -> 16 -> 256 channels, two LayerNorm2d)
    ref = (4 * 4 + 4) + 2 * 4 + (16 * 4 * 4 + 16) + 2 * 16 + (16 * 256 + 256)
    assert rows["sam_reference_encoder"]["total"] == ref == 4_684
    # design card: CLIP and SAM frozen; LLM (full), projector, box head, seg head and the
    # reference-mask input trained
    expected = (rows["language_model"]["total"] + rows["lm_head"]["total"]
                + rows["projector"]["total"] + rows["seg_head"]["total"]
                + rows["mask_encoder_box"]["total"] + rows["sam_reference_encoder"]["total"])
    assert rows["all"]["trainable"] == expected == 6_777_770_240 + 4_684
    assert rows["vision_tower"]["trainable"] == 0 and rows["sam_mask_decoder"]["trainable"] == 0


def test_lisa_7b_counts(counts):
    rows = counts["lisa-7b"]
    assert "mask_encoder_box" not in rows
    assert rows["vision_tower"]["total"] == 303_179_776  # 224 px: 257 positions instead of 577
    lora = 32 * 2 * (4096 * 8 + 8 * 4096)  # r=8 on q_proj and v_proj of 32 layers
    assert lora == 4_194_304
    assert rows["language_model"]["total"] == 6_607_605_760 + lora
    embed = 32064 * 4096
    assert rows["language_model"]["trainable"] == lora + embed
    assert sam_total(rows) == 641_090_608
    iou_head = (256 * 256 + 256) * 2 + 256 * 4 + 4  # frozen: no loss supervises SAM's IoU
    assert rows["sam_mask_decoder"]["total"] == 4_058_340
    assert rows["sam_mask_decoder"]["trainable"] == 4_058_340 - iou_head == 3_925_728
    expected = (lora + embed + rows["lm_head"]["total"] + rows["projector"]["total"]
                + rows["seg_head"]["total"] + rows["sam_mask_decoder"]["trainable"])
    assert rows["all"]["trainable"] == expected == 309_598_176


def test_small_preset_is_about_100m():
    with torch.device("meta"):
        model = SegLLMModel.from_config(SegLLMConfig.from_name("small"))
    total = model.parameter_counts()["all"]["total"]
    assert 90e6 < total < 110e6
