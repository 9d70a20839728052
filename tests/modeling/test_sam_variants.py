"""An official SAM file's variant (ViT-B / L / H) is read from its tensor shapes.

The fake checkpoints hold the official shapes (segment_anything's own ``sam_model_registry``,
built on the meta device) as zero-stride views of one value per tensor, so a file is a few
kilobytes and still loads as full-size tensors.
"""

from __future__ import annotations

import pytest
import torch
from segment_anything import sam_model_registry
from transformers import LlavaForConditionalGeneration

from segllm.config import SegLLMConfig
from segllm.modeling.decoders.sam import SAMConfig, SAMDecoder, build_sam, sam_variant
from segllm.modeling.llava import build_llava_config
from segllm.modeling.model import SegLLMModel
from segllm.tokenizer import build_tiny_tokenizer

# embed dim, blocks, heads, global attention blocks: segment_anything's build_sam_vit_b/l/h
OFFICIAL = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}


def official_state(variant: str) -> dict[str, torch.Tensor]:
    """The official model's state dict, every tensor the value i broadcast to its shape."""
    with torch.device("meta"):
        sam = sam_model_registry[variant]()
    return {k: torch.tensor(float(i), dtype=v.dtype).expand(v.shape)
            for i, (k, v) in enumerate(sam.state_dict().items())}


def sizes(cfg: SAMConfig) -> tuple:
    return (cfg.encoder_embed_dim, cfg.encoder_depth, cfg.encoder_num_heads,
            tuple(cfg.encoder_global_attn_indexes))


@pytest.mark.parametrize("variant", sorted(OFFICIAL))
def test_an_official_file_gives_its_sizes(variant, tmp_path):
    path = tmp_path / f"sam_{variant}.pth"
    torch.save(official_state(variant), path)
    assert path.stat().st_size < 200_000  # the real files are 375 MB to 2.5 GB
    state = SAMDecoder.read_checkpoint(path)
    assert sam_variant(state) == variant
    tiny = SegLLMConfig.from_name("tiny", decoder_config={"mask_threshold": 0.25}).decoder_config
    cfg = SAMDecoder.config_for_checkpoint(state, tiny)
    assert sizes(cfg) == OFFICIAL[variant]
    assert (cfg.prompt_embed_dim, cfg.image_size, cfg.mask_threshold) == (256, 1024, 0.25)
    with torch.device("meta"):
        ours = build_sam(cfg)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape
                                                                  for k, v in state.items()}


def test_other_files_keep_the_config():
    tiny = SegLLMConfig.from_name("tiny").decoder_config
    state = build_sam(tiny).state_dict()
    assert sam_variant(state) is None
    assert SAMDecoder.config_for_checkpoint(state, tiny) is tiny
    gap = {k: v for k, v in official_state("vit_b").items() if ".blocks.4." not in k}
    assert sam_variant(gap) is None  # a gap in the blocks: not a whole encoder


@pytest.fixture()
def llava_dir(tmp_path):
    cfg = SegLLMConfig.from_name("tiny")
    tok = build_tiny_tokenizer(segllm_tokens=False)
    cfg.token_ids.update(image=tok.convert_tokens_to_ids("<image>"), pad=tok.pad_token_id,
                         bos=tok.bos_token_id, eos=tok.eos_token_id)
    LlavaForConditionalGeneration(build_llava_config(cfg)).save_pretrained(tmp_path / "llava-hf")
    tok.save_pretrained(tmp_path / "llava-hf")
    return tmp_path / "llava-hf"


def test_from_components_takes_an_official_vit_b_file_without_overrides(llava_dir, tmp_path):
    """The tiny preset says a 32-d decoder; the ViT-B file's shapes decide, and it loads."""
    state = official_state("vit_b")
    torch.save(state, tmp_path / "sam_vit_b_01ec64.pth")
    model = SegLLMModel.from_components(llava_dir, tmp_path / "sam_vit_b_01ec64.pth",
                                        preset="tiny")
    assert sizes(model.config.decoder_config) == OFFICIAL["vit_b"]
    assert model.seg_head.prompt_dim == 256
    loaded = model.decoder.sam.state_dict()
    for key in ("image_encoder.patch_embed.proj.weight", "image_encoder.blocks.11.attn.rel_pos_h",
                "mask_decoder.iou_token.weight"):
        assert torch.equal(loaded[key], state[key]), key
