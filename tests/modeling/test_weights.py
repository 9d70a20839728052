"""Weights: save -> load is bit-identical; checkpoints in the real formats load strictly."""

import os
import stat

import pytest
import torch
from transformers import AutoTokenizer, LlavaForConditionalGeneration

from segllm.batching import build_batch
from segllm.config import SegLLMConfig
from segllm.modeling.decoders.sam import build_sam
from segllm.modeling.llava import build_llava_config
from segllm.modeling.loading import CheckpointError
from segllm.modeling.model import SegLLMModel
from segllm.tokenizer import build_tiny_tokenizer
from segllm.train.objective import compute_objective
from tests.conftest import make_conversation


def outputs(model, batch):
    model.eval()
    with torch.no_grad():
        out = compute_objective(model, batch)
    return out


def test_save_load_is_bit_identical(tmp_path, tiny_model, tiny_batch):
    with torch.no_grad():  # make LoRA B non-zero so the adapters matter
        for name, p in tiny_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    before = outputs(tiny_model, tiny_batch)
    tiny_model.save_pretrained(tmp_path / "m")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    loaded = SegLLMModel.from_pretrained(tmp_path / "m")
    after = outputs(loaded, tiny_batch)
    assert torch.equal(before.logits, after.logits)
    for a, b in zip(before.mask_logits, after.mask_logits, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(before.loss, after.loss)
    assert loaded.config == tiny_model.config
    # the folder others will read gets the usual permissions, not mkdtemp's owner-only 0700
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "m" / "model.safetensors").stat().st_mode) == 0o666 & ~umask
    assert loaded.tokenizer.convert_tokens_to_ids("[SEG]") == tiny_model.config.token_ids["seg"]
    trainable = lambda m: {n for n, p in m.named_parameters() if p.requires_grad}  # noqa: E731
    assert trainable(loaded) == trainable(tiny_model)
    # saving again over the same directory replaces it whole
    loaded.save_pretrained(tmp_path / "m")
    assert torch.equal(outputs(SegLLMModel.from_pretrained(tmp_path / "m"), tiny_batch).logits,
                       before.logits)


def test_from_pretrained_reports_bad_directories(tmp_path, tiny_model):
    with pytest.raises(FileNotFoundError, match="not a segllm model directory"):
        SegLLMModel.from_pretrained(tmp_path)
    tiny_model.save_pretrained(tmp_path / "m")
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "m" / "model.safetensors")
    state.pop("seg_head.mlp.0.bias")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "m" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): seg_head.mlp.0.bias; "
                                              r"1 unexpected key\(s\): extra.weight"):
        SegLLMModel.from_pretrained(tmp_path / "m")


@pytest.fixture()
def component_files(tmp_path):
    """A tiny llava-hf directory (transformers' save_pretrained) and a SAM ``torch.save`` file."""
    cfg = SegLLMConfig.from_name("tiny")
    tok = build_tiny_tokenizer(segllm_tokens=False)  # a base tokenizer: segllm adds its tokens
    cfg.token_ids.update(image=tok.convert_tokens_to_ids("<image>"), pad=tok.pad_token_id,
                         bos=tok.bos_token_id, eos=tok.eos_token_id)
    torch.manual_seed(1)
    llava = LlavaForConditionalGeneration(build_llava_config(cfg))
    llava.save_pretrained(tmp_path / "llava-hf")
    tok.save_pretrained(tmp_path / "llava-hf")
    sam = build_sam(cfg.decoder_config)
    torch.save(sam.state_dict(), tmp_path / "sam_tiny.pth")
    return tmp_path / "llava-hf", tmp_path / "sam_tiny.pth", llava, sam


def test_components_load_through_the_real_checkpoint_path(component_files):
    llava_dir, sam_path, llava, sam = component_files
    model = SegLLMModel.from_components(llava_dir, sam_path, preset="tiny")
    for name, tensor in llava.state_dict().items():
        key = name.replace("q_proj.weight", "q_proj.base_layer.weight").replace(
            "v_proj.weight", "v_proj.base_layer.weight") if "language_model" in name else name
        assert torch.equal(model.llava.state_dict()[key], tensor), name
    for name, tensor in sam.state_dict().items():
        assert torch.equal(model.decoder.sam.state_dict()[name], tensor), name
    tok = model.tokenizer
    assert model.config.token_ids["seg"] == tok.convert_tokens_to_ids("[SEG]")
    assert model.config.token_ids["image"] == llava.config.image_token_index
    out = compute_objective(model, build_batch([make_conversation("c")], tok, model.config))
    assert torch.isfinite(out.loss)
    tok2 = AutoTokenizer.from_pretrained(llava_dir)
    assert "[SEG]" not in tok2.get_vocab()  # the source directory was not modified


def test_sam_checkpoint_mismatch_is_reported(component_files, tmp_path):
    llava_dir, sam_path, _, sam = component_files
    state = sam.state_dict()
    state.pop("mask_decoder.iou_token.weight")
    state["image_encoder.blocks.9.attn.qkv.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"broken.pth does not fit Sam: 1 missing key\(s\): "
                                              r"mask_decoder.iou_token.weight; 1 unexpected"):
        SegLLMModel.from_components(llava_dir, tmp_path / "broken.pth", preset="tiny")
    torch.save({"not": "tensors"}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="pickled.pth: expected a mapping of parameter names"):
        SegLLMModel.from_components(llava_dir, tmp_path / "pickled.pth", preset="tiny")
