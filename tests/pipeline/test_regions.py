"""Regions (``<region>``): a mask or a box given with a question, fed like one referenced mask."""

from __future__ import annotations

import numpy as np
import pytest

from segllm.conversation import REGION_ROUND, expand_refs, region_indices
from segllm.masks import box_to_mask
from segllm.pipeline import InputError
from segllm.tokens import MASK_BOX_TOKEN, MASK_CROP_TOKEN
from tests.conftest import box_mask
from tests.pipeline.helpers import forcing

SLOT = MASK_CROP_TOKEN + MASK_BOX_TOKEN
BOX = box_mask(48, 64, 30, 6, 50, 30)  # x 30..49, y 6..29 of the 48x64 test image


def test_region_tags_expand_in_text_order_and_training_text_keeps_them():
    question = "Between <region:1> and <region>, left of <ref:0>, not <region>."
    assert region_indices(question) == [1, 0, 1]  # the n-th bare tag is region n
    text, slots = expand_refs(question, [2], 1, "s", num_regions=2)
    assert text == f"Between {SLOT} and {SLOT}, left of {SLOT * 2}, not {SLOT}."
    assert slots == [(1, REGION_ROUND, 1), (1, REGION_ROUND, 0), (1, 0, 0), (1, 0, 1),
                     (1, REGION_ROUND, 1)]
    text, slots = expand_refs("Segment <region>.", [], 0, "s")  # training data: no regions
    assert text == "Segment <region>." and slots == []


def test_a_region_is_fed_exactly_like_a_reference_to_the_same_mask(pipeline, image):
    """Same tokens, same crop and box slots, same decoder input: the same answer and masks."""
    generation = forcing(pipeline, "It is [SEG].")
    session = pipeline.start(image)
    session.ask("Segment the red square.", generation=forcing(pipeline, "Sure, [SEG]."))
    as_ref = session.ask("Segment the shape left of <ref:0>.", ref_masks={0: [BOX]},
                         generation=generation)
    session.undo()
    as_region = session.ask("Segment the shape left of <region>.", regions=[BOX],
                            generation=generation)
    assert as_region.question == "Segment the shape left of <region>."
    assert as_region.token_ids == as_ref.token_ids and as_region.warnings == []
    assert np.array_equal(as_region.masks[0], as_ref.masks[0])
    assert as_region.scores == pytest.approx(as_ref.scores, abs=1e-6)
    assert session._rounds[1].ref_crops.shape[0] == 1  # one crop+box slot pair


def test_a_box_is_a_filled_rectangle_at_the_image_size(pipeline, image):
    session = pipeline.start(image)
    job = session.prepare("Segment <region>.", ref_masks=None, answer=None,
                          generation=pipeline.generation, regions=[[30, 6, 20, 24]])  # x y w h
    assert np.array_equal(job.decoder_ref_mask, BOX)
    assert np.array_equal(box_to_mask([30, 6, 20, 24], 48, 64).astype(bool), BOX)
    clipped = session._region_mask(0, np.array([60.5, -5, 100, 10]))  # clipped to the image
    assert clipped.shape == (48, 64) and clipped.sum() == 4 * 5


def test_the_decoder_gets_the_union_of_references_and_used_regions(pipeline, image):
    session = pipeline.start(image)
    first = session.ask("Segment the red square.", generation=forcing(pipeline, "Sure, [SEG]."))
    other = box_mask(48, 64, 0, 0, 8, 8)
    job = session.prepare("Segment <region:1> beside <ref:0>.", ref_masks=None, answer=None,
                          generation=pipeline.generation, regions=[BOX, other])
    assert np.array_equal(job.decoder_ref_mask, first.masks[0] | other)  # region 0 unused
    assert job.warnings == ["region 0 was given but the question has no <region:0>; it was "
                            "not used"]
    assert len(job.ref_crops) == 1 + len(first.masks)


CONVERSATION = [  # (question, regions, forced answer)
    ("Segment the red square.", None, "Sure, [SEG]."),
    ("Segment the shape inside <region>.", [BOX], "It is [SEG]."),
    ("Segment <ref:1> and the shape left of <region>.", [[2, 2, 12, 30]], "[SEG] and [SEG]."),
    ("And between <region:1> and <region:0>?", [BOX, [0, 20, 10, 10]], "[SEG]."),
]


@pytest.fixture(scope="module")
def aware_pipeline():
    """A tiny pipeline with mask-aware decoding, its reference path awake (not zero-initialised)."""
    import torch

    from segllm.config import SegLLMConfig
    from segllm.modeling.model import SegLLMModel
    from segllm.pipeline import SegLLMPipeline

    torch.manual_seed(0)
    model = SegLLMModel.from_config(SegLLMConfig.from_name("tiny", mask_aware_decoding=True))
    last = model.decoder.reference_encoder.layers[-1]
    with torch.no_grad():
        last.weight.normal_(0, 0.5)
        last.bias.normal_(0, 0.5)
    return SegLLMPipeline(model)


def test_regions_give_the_same_rounds_with_and_without_the_kv_cache(aware_pipeline, image):
    pipeline = aware_pipeline
    runs = []
    for reuse_cache in (True, False):
        session = pipeline.start(image, reuse_cache=reuse_cache)
        replies = [session.ask(q, regions=regions, generation=forcing(pipeline, answer))
                   for q, regions, answer in CONVERSATION]
        runs.append((session, replies))
    (cached, with_cache), (fresh, recomputed) = runs
    assert cached.token_ids == fresh.token_ids and cached.cache_length > 0 == fresh.cache_length
    assert [len(r.masks) for r in with_cache] == [1, 1, 2, 1]
    for a, b in zip(with_cache, recomputed, strict=True):
        assert a.token_ids == b.token_ids
        for x, y in zip(a.masks, b.masks, strict=True):
            assert np.array_equal(x, y)
        assert a.scores == pytest.approx(b.scores, abs=1e-5)


def test_with_mask_aware_decoding_the_region_reaches_the_decoder(aware_pipeline, image,
                                                                 monkeypatch):
    pipeline = aware_pipeline
    seen = []
    decode = pipeline.model.decode_masks

    def spy(*args, ref_masks=None, **kwargs):
        seen.append(ref_masks)
        return decode(*args, ref_masks=ref_masks, **kwargs)

    monkeypatch.setattr(pipeline.model, "decode_masks", spy)
    session = pipeline.start(image)
    first = session.ask("Segment it.", generation=forcing(pipeline, "[SEG]."))
    session.ask("Segment <region> and <ref:0>.", regions=[BOX],
                generation=forcing(pipeline, "[SEG] and [SEG]."))
    assert seen[0] is None and seen[1].shape == (2, 48, 64)  # one union per [SEG]
    for union in seen[1]:
        assert np.array_equal(union.numpy() > 0, BOX | first.masks[0])


@pytest.mark.parametrize("question, regions, message", [
    ("Segment <region>.", None, "<region> stands for region 0, but no region was given"),
    ("Segment <region> and <region>.", [BOX],
     "<region> stands for region 1, but only 1 region(s) were given"),
    ("Segment <region:2>.", [BOX], "<region:2> stands for region 2, but only 1 region(s)"),
    ("Segment <region>.", [np.ones((10, 10), bool)],
     "region 0 has shape (10, 10); it must be a mask of the image's size (48, 64)"),
    ("Segment <region:1>.", [BOX, np.zeros((48, 64), bool)],
     "region 1 is empty: it covers no pixel of the 64x48 image"),
    ("Segment <region>.", [[100, 100, 5, 5]], "region 0 is empty"),
    ("Segment <region>.", [[0, 0, float("nan"), 5]], "region 0: the box"),
    ("Segment <region>.", ["the red one"], "region 0 must be a mask or a box of numbers"),
])
def test_bad_regions_are_refused_by_index_and_the_session_stays_usable(pipeline, image, question,
                                                                       regions, message):
    session = pipeline.start(image)
    with pytest.raises(InputError) as caught:
        session.ask(question, regions=regions)
    assert message in str(caught.value)
    assert session.num_rounds == 0 and session.token_ids == []
    assert session.ask("Segment it.", regions=[BOX]).warnings == [
        "region 0 was given but the question has no <region:0>; it was not used"]


def test_batched_requests_take_regions_per_session(pipeline, image):
    generation = forcing(pipeline, "It is [SEG].")
    a, b = pipeline.start(image), pipeline.start(image)
    batched = pipeline.ask_batch([(a, "Segment <region>."), (b, "Segment the square.")],
                                 generation=generation, regions=[[BOX], None])
    alone = pipeline.start(image).ask("Segment <region>.", regions=[BOX], generation=generation)
    assert batched[0].token_ids == alone.token_ids
    assert np.array_equal(batched[0].masks[0], alone.masks[0])
    with pytest.raises(InputError, match="request 1: <region> stands for region 0"):
        pipeline.ask_batch([(a, "Again."), (b, "Segment <region>.")], generation=generation)
