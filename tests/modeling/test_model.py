"""The tiny preset end to end: forward, backward, gradient routing and the errors it names."""

import dataclasses

import pytest
import torch

from segllm.batching import build_batch
from segllm.train.objective import compute_objective
from tests.conftest import make_conversation


def test_forward_backward_two_three_round_conversations(tiny_model, tiny_batch):
    out = compute_objective(tiny_model, tiny_batch)
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    w = tiny_model.config.loss
    expected = w.ce_weight * out.ce_loss + w.bce_weight * out.bce_loss + w.dice_weight * out.dice_loss
    assert torch.allclose(out.loss, expected)
    # masks at each image's own size, grouped per round: rounds 0, 1 have one, round 2 two
    assert [tuple(m.shape) for m in out.mask_logits] == [(4, 48, 64), (4, 40, 56)]
    assert out.num_masks == 8
    grouped = out.masks_by_round(1, 3)
    assert [len(r) for r in grouped] == [1, 1, 2]
    out.loss.backward()
    for name, p in tiny_model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"trainable {name} got no gradient"
        else:
            assert p.grad is None, f"frozen {name} got a gradient"
    # the signal really flows: seg head, box head, projector, LoRA B and the token embeddings
    for name in ["seg_head.mlp.0.weight", "mask_encoder.box_proj.weight",
                 "llava.model.multi_modal_projector.linear_1.weight",
                 "llava.model.language_model.layers.0.self_attn.q_proj.lora_B.default.weight",
                 "llava.model.language_model.embed_tokens.weight"]:
        assert dict(tiny_model.named_parameters())[name].grad.abs().sum() > 0, name


def test_trainable_set_follows_the_preset(tiny_model):
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable)
    assert not any(n.startswith("llava.model.vision_tower") for n in trainable)
    assert not any(n.startswith("decoder.") for n in trainable)
    assert not any(n.endswith("q_proj.base_layer.weight") for n in trainable)
    # LoRA only in the LLM, never in CLIP (whose attention also has q_proj / v_proj)
    assert not any("lora" in n for n, _ in tiny_model.llava.model.vision_tower.named_parameters())


def test_seg_positions_are_the_states_that_predict_seg(tiny_model, tiny_batch):
    rows, cols = tiny_model.seg_positions(tiny_batch.input_ids)
    seg = tiny_model.config.token_ids["seg"]
    assert (tiny_batch.input_ids[rows, cols + 1] == seg).all()
    assert int((tiny_batch.input_ids == seg).sum()) == len(rows) == 8


def test_hidden_state_at_the_predicting_position_drives_the_mask(tiny_model, tiny_batch):
    """Changing a token after the last [SEG] must not change any mask (causal), while the
    masks do depend on the question text before them."""
    tiny_model.eval()
    with torch.no_grad():
        base = tiny_model(**tiny_batch.model_inputs()).mask_logits[0]
        changed = dataclasses.replace(tiny_batch, input_ids=tiny_batch.input_ids.clone())
        last = int(tiny_batch.attention_mask[0].sum()) - 1  # the final </s>
        changed.input_ids[0, last] = 5
        assert torch.equal(tiny_model(**changed.model_inputs()).mask_logits[0], base)
        changed.input_ids[0, 3] = 7  # a system-prompt token, before every [SEG]
        assert not torch.allclose(tiny_model(**changed.model_inputs()).mask_logits[0], base)


def test_seg_count_mismatch_names_sample_and_round(tiny_model, tiny_batch):
    bad = dataclasses.replace(tiny_batch, target_rounds=list(tiny_batch.target_rounds))
    bad.target_rounds[1] = torch.tensor([0, 1, 1, 2])  # round 1 claims 2 targets, round 2 one
    with pytest.raises(ValueError, match=r"sample 'conv-b' round 1: 1 \[SEG\] token\(s\) in the "
                                         r"sequence but 2 target mask\(s\)"):
        compute_objective(tiny_model, bad)


def test_image_token_feature_mismatch_names_sample_and_round(tiny_model, tiny_batch):
    ids = tiny_batch.input_ids.clone()
    image_id = tiny_model.config.token_ids["image"]
    first = int((ids[1] == image_id).nonzero()[0])
    ids[1, first] = 9  # one image token fewer in the second sample
    bad = dataclasses.replace(tiny_batch, input_ids=ids)
    with pytest.raises(ValueError, match=r"sample 'conv-b' round 0: 15 image tokens in the "
                                         r"sequence but the vision tower gives 16 features"):
        compute_objective(tiny_model, bad)


def test_reference_to_missing_round_names_sample_and_round(tiny_model):
    record, image = make_conversation("conv-x")
    record["rounds"][1]["question"] = "Segment the shape right of <ref:2>."
    record["rounds"][1]["refs"] = [2]
    with pytest.raises(ValueError, match=r"sample 'conv-x' round 1: <ref:2> refers to a round "
                                         r"that does not exist"):
        build_batch([(record, image)], tiny_model.tokenizer, tiny_model.config)


def test_reference_mask_count_mismatch_names_sample_and_round(tiny_model, tiny_batch):
    bad = dataclasses.replace(tiny_batch, ref_rounds=list(tiny_batch.ref_rounds))
    bad.ref_rounds[0] = bad.ref_rounds[0][:-1]
    with pytest.raises(ValueError, match=r"sample 'conv-a' round 1: 3 mask-crop and 3 mask-box "
                                         r"slots but 2 referenced mask"):
        compute_objective(tiny_model, bad)


def test_refs_field_must_match_the_question(tiny_model):
    record, image = make_conversation("conv-y")
    record["rounds"][2]["refs"] = [1]
    with pytest.raises(ValueError, match=r"sample 'conv-y' round 2: 'refs' lists \[1\] but the "
                                         r"question references \[0, 1\]"):
        build_batch([(record, image)], tiny_model.tokenizer, tiny_model.config)


def test_target_mask_of_wrong_size_is_named(tiny_model):
    from tests.conftest import box_mask, rle_of

    record, image = make_conversation("conv-z")
    record["rounds"][0]["targets"][0]["rle"] = rle_of(box_mask(10, 10, 1, 1, 5, 5))
    with pytest.raises(ValueError, match=r"sample 'conv-z' round 0 target 0: mask of size"):
        build_batch([(record, image)], tiny_model.tokenizer, tiny_model.config)


def test_no_target_round_and_lisa_style_model_without_mask_encoder(tiny_tokenizer):
    from segllm.config import SegLLMConfig
    from segllm.modeling.model import SegLLMModel

    torch.manual_seed(0)
    cfg = SegLLMConfig.from_name("tiny", mask_encoder={"enabled": False},
                                 trainable={"llm": "full", "decoder": {"mask_decoder": True}})
    model = SegLLMModel.from_config(cfg, tokenizer=tiny_tokenizer)
    assert model.mask_encoder is None
    record, image = make_conversation("plain")
    record["rounds"] = [record["rounds"][0],
                        {"question": "Segment the purple star.", "answer": "There is none.",
                         "targets": [], "refs": [], "type": "referring"}]
    batch = build_batch([(record, image)], tiny_tokenizer, cfg)
    out = compute_objective(model, batch)
    out.loss.backward()
    assert out.num_masks == 1 and [len(r) for r in out.masks_by_round(0, 2)] == [1, 0]
    assert model.decoder.sam.mask_decoder.output_upscaling[0].weight.grad is not None
    for name, p in model.named_parameters():  # a trained decoder: still exactly the trainable set
        assert (p.grad is not None) == p.requires_grad, name
    # a reference needs the mask encoder
    record2, image2 = make_conversation("needs-encoder")
    with pytest.raises(ValueError, match="no mask encoder"):
        compute_objective(model, build_batch([(record2, image2)], tiny_tokenizer, cfg))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward_including_sam(tiny_model, tiny_batch, dtype):
    """segment_anything's prompt encoder needs its positional matrix in float32; the wrapper
    keeps it so through .to(dtype), so the whole model (SAM included) runs in half precision."""
    tiny_model.to(dtype)
    pe = tiny_model.decoder.sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    assert pe.dtype == torch.float32
    assert tiny_model.decoder.sam.mask_decoder.iou_token.weight.dtype == dtype
    out = compute_objective(tiny_model, tiny_batch.to("cpu", dtype))
    assert torch.isfinite(out.loss)
    assert out.mask_logits[0].dtype == dtype and out.mask_logits[0].shape == (4, 48, 64)
    out.loss.backward()


def test_every_trainable_part_gets_a_gradient_without_refs_or_seg(tiny_model, tiny_tokenizer):
    """ZeRO-2 needs the same gradients on every process: a batch with no reference and no
    [SEG] still reaches the box head and the seg head (with zero gradients)."""
    record, image = make_conversation("plain")
    record["rounds"] = [{"question": "Describe the image.", "answer": "Three boxes.",
                         "targets": [], "refs": [], "type": "referring"}]
    batch = build_batch([(record, image)], tiny_tokenizer, tiny_model.config)
    out = compute_objective(tiny_model, batch)
    assert out.num_masks == 0
    out.loss.backward()
    for name, p in tiny_model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    assert tiny_model.mask_encoder.box_proj.weight.grad.abs().sum() == 0
    assert tiny_model.seg_head.mlp[0].weight.grad.abs().sum() == 0
    with torch.no_grad():  # and nothing extra runs when no gradient is wanted
        assert compute_objective(tiny_model, batch).loss == out.loss
