"""Mask-aware decoding (referenced masks into the decoder) and mask-encoder token dropout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segllm.batching import build_batch, decode_rle
from segllm.config import SegLLMConfig
from segllm.modeling.mask_encoder import MaskEncoder
from segllm.modeling.model import SegLLMModel
from segllm.pipeline import SegLLMPipeline
from tests.conftest import make_conversation


def _model(tokenizer, **overrides) -> SegLLMModel:
    torch.manual_seed(0)
    return SegLLMModel.from_config(SegLLMConfig.from_name("tiny", **overrides),
                                   tokenizer=tokenizer).eval()


def _masks(model, batch):
    with torch.no_grad():
        return model(**batch.model_inputs()).mask_logits


def _wake_reference_path(model) -> None:
    """Give the zero-initialised last convolution weights, as training would."""
    last = model.decoder.reference_encoder.layers[-1]
    with torch.no_grad():
        last.weight.normal_(0, 0.5)
        last.bias.normal_(0, 0.5)


@pytest.fixture()
def batch(tiny_tokenizer):
    config = _model(tiny_tokenizer, mask_aware_decoding=True).config  # token ids filled in
    return build_batch([make_conversation("conv-a", seed=1)], tiny_tokenizer, config)


def test_reference_masks_are_the_union_of_what_each_question_references(batch):
    record, _ = make_conversation("conv-a", seed=1)
    target = [[decode_rle(t["rle"], (48, 64), "t") for t in r["targets"]] for r in record["rounds"]]
    refs = batch.seg_ref_masks[0].numpy().astype(bool)
    assert refs.shape == (4, 48, 64)  # one per [SEG]: rounds 0, 1, 2, 2
    assert not refs[0].any()  # round 0 references nothing
    assert np.array_equal(refs[1], target[0][0])  # round 1: <ref:0>
    both = target[0][0] | target[1][0]  # round 2: <ref:1> and <ref:0>, for each of its masks
    assert np.array_equal(refs[2], both) and np.array_equal(refs[3], both)


def test_a_new_reference_path_leaves_a_pretrained_decoder_unchanged(tiny_tokenizer, batch):
    """Zero-initialised: switching mask-aware decoding on changes no mask until it learns."""
    plain = _model(tiny_tokenizer)
    aware = _model(tiny_tokenizer, mask_aware_decoding=True)
    missing, unexpected = aware.load_state_dict(plain.state_dict(), strict=False)
    assert all(k.startswith("decoder.reference_encoder.") for k in missing) and not unexpected
    for a, b in zip(_masks(plain, batch), _masks(aware, batch), strict=True):
        assert torch.equal(a, b)


def test_referenced_masks_change_only_the_rounds_that_reference(tiny_tokenizer, batch):
    aware = _model(tiny_tokenizer, mask_aware_decoding=True)
    _wake_reference_path(aware)
    with_refs = _masks(aware, batch)[0]
    cleared = batch.model_inputs()
    cleared["seg_ref_masks"] = [torch.zeros_like(m) for m in batch.seg_ref_masks]
    with torch.no_grad():
        without = aware(**cleared).mask_logits[0]
    assert torch.equal(with_refs[0], without[0])  # round 0 has no reference
    for i in (1, 2, 3):
        assert not torch.allclose(with_refs[i], without[i]), i


def test_reference_path_trains_and_plain_rounds_give_it_exactly_zero(tiny_tokenizer):
    from segllm.train.objective import compute_objective

    aware = _model(tiny_tokenizer, mask_aware_decoding=True).train()
    _wake_reference_path(aware)
    record, image = make_conversation("conv-a", seed=1)
    out = compute_objective(aware, build_batch([(record, image)], tiny_tokenizer, aware.config))
    out.loss.backward()
    assert aware.decoder.reference_encoder.layers[0].weight.grad.abs().sum() > 0
    aware.zero_grad()
    record["rounds"] = record["rounds"][:1]  # no reference anywhere: the path adds zero
    out = compute_objective(aware, build_batch([(record, image)], tiny_tokenizer, aware.config))
    out.loss.backward()
    assert aware.decoder.reference_encoder.layers[0].weight.grad.abs().sum() == 0


def test_session_feeds_the_referenced_masks_as_training_does(tiny_tokenizer):
    """Teacher-forced with ground-truth references: the session's masks equal the training
    forward's, so inference gives the decoder the same union training did."""
    model = _model(tiny_tokenizer, mask_aware_decoding=True)
    _wake_reference_path(model)
    pipeline = SegLLMPipeline(model)
    record, image = make_conversation("conv-a", seed=1)
    batch = build_batch([(record, image)], tiny_tokenizer, model.config)
    expected = _masks(model, batch)[0] > 0
    session = pipeline.start(image)
    masks = []
    for rnd in record["rounds"]:
        ref_masks = {k: [decode_rle(t["rle"], (48, 64), "t") for t in record["rounds"][k]["targets"]]
                     for k in rnd["refs"]}
        masks += session.ask(rnd["question"], answer=rnd["answer"], ref_masks=ref_masks or None).masks
    for mine, theirs in zip(masks, expected, strict=True):
        assert np.array_equal(mine, theirs.numpy())


def test_own_masks_reach_the_decoder_at_inference(tiny_tokenizer, monkeypatch):
    model = _model(tiny_tokenizer, mask_aware_decoding=True)
    pipeline = SegLLMPipeline(model)
    record, image = make_conversation("conv-a", seed=1)
    seen = []
    decode = model.decode_masks

    def spy(*args, ref_masks=None, **kwargs):
        seen.append(None if ref_masks is None else ref_masks.clone())
        return decode(*args, ref_masks=ref_masks, **kwargs)

    monkeypatch.setattr(model, "decode_masks", spy)
    session = pipeline.start(image)
    first = session.ask("Segment the red square.", answer="Sure, [SEG].")
    assert seen[-1] is None
    first.masks[0][4:20, 4:20] = True  # a random model may predict nothing: stand in for one
    session.ask("Segment the shape right of <ref:0>.", answer="It is [SEG].")
    assert torch.equal(seen[-1][0].bool(), torch.from_numpy(first.masks[0]))


def test_token_dropout_is_per_token_without_rescaling_and_scaled_at_inference():
    encoder = MaskEncoder(hidden=8, token_dropout=0.5, inference_scale=0.5)
    crops = torch.zeros(4000, 3, 4, 4)
    boxes = torch.rand(4000, 4)

    def encode_cls(pixels):
        return torch.ones(pixels.shape[0], 8)

    torch.manual_seed(0)
    crop, box = encoder.train()(crops, boxes, encode_cls)
    crop_kept = (crop != 0).any(dim=1)
    assert torch.all(crop[crop_kept] == 1.0)  # kept tokens are not rescaled
    assert 0.45 < crop_kept.float().mean() < 0.55
    full_box = encoder.box_proj(boxes)
    box_kept = (box == full_box).all(dim=1)
    assert torch.all(box[~box_kept] == 0) and 0.45 < box_kept.float().mean() < 0.55
    # crop and box are drawn independently (SegLLM draws two masks)
    both = (crop_kept & box_kept).float().mean()
    assert 0.2 < both < 0.3
    crop, box = encoder.eval()(crops[:3], boxes[:3], encode_cls)
    assert torch.equal(crop, torch.full((3, 8), 0.5))
    torch.testing.assert_close(box, 0.5 * encoder.box_proj(boxes[:3]))
    with pytest.raises(ValueError, match="token_dropout"):
        MaskEncoder(hidden=8, token_dropout=1.5)


def test_token_dropout_one_zeroes_the_tokens_for_the_retrained_ablation():
    encoder = MaskEncoder(hidden=8, token_dropout=1.0, inference_scale=0.0)
    crops, boxes = torch.zeros(5, 3, 4, 4), torch.rand(5, 4)

    def encode_cls(pixels):
        return torch.ones(pixels.shape[0], 8, requires_grad=True)

    for mode in (encoder.train(), encoder.eval()):
        crop, box = mode(crops, boxes, encode_cls)
        assert crop.shape == box.shape == (5, 8)
        assert not crop.any() and not box.any()


def test_presets_say_which_semantics_they_use():
    assert SegLLMConfig.from_name("segllm-7b").mask_aware_decoding is True
    assert SegLLMConfig.from_name("segllm-7b").mask_encoder.token_dropout == 0.5
    assert SegLLMConfig.from_name("lisa-7b").mask_aware_decoding is False
    assert SegLLMConfig.from_name("tiny").mask_aware_decoding is False
    shapes = SegLLMConfig.from_name("shapes")
    assert shapes.mask_aware_decoding and shapes.trainable.vision_tower


def test_dense_prompt_conditioning_starts_at_zero_and_then_reaches_every_pixel(tiny_tokenizer,
                                                                               batch):
    plain = _model(tiny_tokenizer, mask_aware_decoding=True)
    dense = _model(tiny_tokenizer, mask_aware_decoding=True,
                   decoder_config={"dense_prompt_conditioning": True})
    missing, unexpected = dense.load_state_dict(plain.state_dict(), strict=False)
    assert all(k.startswith("decoder.prompt_to_dense.") for k in missing) and missing
    assert not unexpected
    for a, b in zip(_masks(plain, batch), _masks(dense, batch), strict=True):
        assert torch.equal(a, b)  # zero at init: a pretrained decoder is unchanged
    with torch.no_grad():
        dense.decoder.prompt_to_dense.proj.weight.normal_(0, 1.0)
    changed = _masks(dense, batch)[0]
    assert not torch.allclose(changed[0], _masks(plain, batch)[0][0])
    assert dense.decoder.prompt_to_dense.proj.weight.requires_grad is False  # tiny: frozen decoder
