"""Augmentation on the synthetic set: a flipped "left of" question still points at the right
shape, masks follow the pixels under scale jitter, referring records are never cropped, and
everything is off by default."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from segllm.data_builders.geometry import Obj, satisfies
from segllm.images import load_image
from segllm.masks import decode_rle, mask_iou, mask_to_bbox
from segllm.records import read_jsonl, validate_record
from segllm.train.augment import AugmentArgs, augment, swap_sides


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> list[tuple[dict, np.ndarray]]:
    from segllm.data_builders.synthetic import write_synthetic

    out = tmp_path_factory.mktemp("scenes")
    write_synthetic(out, num=40, seed=3, image_size=64, min_rounds=3, max_rounds=6, gcg=False)
    return [(r, np.asarray(load_image(Path(out) / r["image"], orientation="stored")))
            for r in read_jsonl(out / "synthetic.jsonl")]


def _obj(target: dict, key: str) -> Obj:
    return Obj(key, "", mask_to_bbox(decode_rle(target["rle"]).astype(bool)), 1.0)


def _sided_rounds(record: dict):
    for rnd in record["rounds"]:
        if rnd["type"] == "positional" and len(rnd["targets"]) == 1:
            for side in ("left", "right"):
                if f"{side} of" in rnd["question"]:
                    yield rnd, side


def test_swap_sides_words():
    assert swap_sides("Left of <ref:0>, the leftmost right eye.") == "Right of <ref:0>, the rightmost left eye."
    assert swap_sides("bright alright") == "bright alright"  # whole words only


def test_flipped_left_of_question_points_at_the_right_shape(scenes):
    checked = 0
    for record, image in scenes:
        for rnd, side in _sided_rounds(record):
            anchor = record["rounds"][rnd["refs"][0]]["targets"][0]
            assert satisfies(_obj(rnd["targets"][0], "t"), _obj(anchor, "a"), side)
        flipped, flipped_image = augment(record, image, AugmentArgs(hflip=1.0), random.Random(0))
        assert np.array_equal(flipped_image, image[:, ::-1])
        validate_record(flipped)
        for (rnd, side), (new, new_side) in zip(_sided_rounds(record), _sided_rounds(flipped), strict=True):
            assert new_side == {"left": "right", "right": "left"}[side]
            anchor = flipped["rounds"][new["refs"][0]]["targets"][0]
            assert satisfies(_obj(new["targets"][0], "t"), _obj(anchor, "a"), new_side)
            # the mirrored target's pixels are the shape's pixels in the mirrored picture
            mask = decode_rle(new["targets"][0]["rle"]).astype(bool)
            assert np.array_equal(mask, decode_rle(rnd["targets"][0]["rle"]).astype(bool)[:, ::-1])
            checked += 1
    assert checked >= 5


def test_scale_jitter_keeps_masks_on_their_pixels(scenes):
    record, _ = scenes[0]
    mask = decode_rle(record["rounds"][0]["targets"][0]["rle"]).astype(bool)
    painted = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)  # the image *is* the mask
    for factor, crop in ((0.6, False), (1.5, False), (1.5, True)):
        args = AugmentArgs(scale=(factor, factor), crop=crop)
        out, image = augment(record, painted, args, random.Random(1))
        validate_record(out)
        new_mask = decode_rle(out["rounds"][0]["targets"][0]["rle"]).astype(bool)
        assert image.shape[:2] == new_mask.shape == (out["height"], out["width"])
        assert mask_iou(image[..., 0] > 127, new_mask) > 0.85
        # referring-type rounds: an enlarged picture is never cropped back ("left of" stays true)
        expected = (64, 64) if factor < 1 else (96, 96)
        assert image.shape[:2] == expected


def test_semantic_records_may_be_cropped(scenes):
    record, image = scenes[0]
    semantic = dict(record, rounds=[dict(record["rounds"][0], type="semantic", refs=[])])
    semantic["rounds"][0]["question"] = "Segment every red shape."
    out, cropped = augment(semantic, image, AugmentArgs(scale=(1.5, 1.5), crop=True), random.Random(2))
    assert cropped.shape[:2] == (64, 64) and (out["height"], out["width"]) == (64, 64)
    assert decode_rle(out["rounds"][0]["targets"][0]["rle"]).any()  # a crop never empties a target


def test_color_jitter_changes_pixels_not_masks(scenes):
    record, image = scenes[1]
    out, jittered = augment(record, image, AugmentArgs(color=0.4), random.Random(5))
    assert jittered.shape == image.shape and not np.array_equal(jittered, image)
    assert [t["rle"] for r in out["rounds"] for t in r["targets"]] == \
        [t["rle"] for r in record["rounds"] for t in r["targets"]]


def test_off_by_default(scenes):
    record, image = scenes[2]
    out, same = augment(record, image, AugmentArgs(), random.Random(0))
    assert out is record and same is image
    assert not AugmentArgs().enabled


def test_training_stream_applies_a_sources_augmentation_deterministically(tmp_path):
    from segllm.data_builders.synthetic import write_synthetic
    from segllm.train.args import SourceArgs
    from segllm.train.data import ConversationSource, MixedConversations, MixtureSampler

    write_synthetic(tmp_path, num=4, seed=1, image_size=32, gcg=False)
    path = str(tmp_path / "synthetic.jsonl")
    plain = ConversationSource.from_args(SourceArgs(path=path))
    flipped = ConversationSource.from_args(SourceArgs(path=path, augment=AugmentArgs(hflip=1.0, color=0.2)))
    assert not plain.augment.enabled and flipped.augment.enabled
    sampler = MixtureSampler([4], [1.0], seed=0)
    a = MixedConversations([flipped], sampler, tokenizer=None, model_config=None, seed=0)
    b = MixedConversations([flipped], sampler, tokenizer=None, model_config=None, seed=0)
    record, image = a.load(3)
    source_record, source_image = plain.load(sampler[3][1])
    assert np.array_equal(image, b.load(3)[1])  # same seed and position, same draws
    assert record["rounds"][0]["question"] == swap_sides(source_record["rounds"][0]["question"])
    assert image.shape == source_image.shape and not np.array_equal(image, source_image)
