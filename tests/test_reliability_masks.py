"""Issue 16, items 1 and 2: every RLE is checked against its size before pycocotools sees it
(counts that do not cover exactly h*w pixels made pycocotools loop for ever or read
uninitialised memory)."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from segllm import masks
from segllm.records import RecordError, validate_conversation

# counts of 741 pixels for a 64x64 (4096-pixel) mask: pycocotools' iou loops on it at 100 % CPU
HANGING_RLE = {"size": [64, 64], "counts": "Ue01o1"}


def _column_runs(mask: np.ndarray) -> list[int]:
    """COCO's run lengths (column-major, starting with background), computed directly."""
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    edges = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(edges).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


@pytest.mark.parametrize("seed", range(6))
def test_compressed_runs_decode_what_pycocotools_encodes(seed):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(1, 70, 2))
    mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
    counts = mask_utils.encode(np.asfortranarray(mask))["counts"]
    assert masks.compressed_runs(counts).tolist() == _column_runs(mask)


def test_large_counts_and_negative_deltas_decode():
    mask = np.zeros((3000, 2000), dtype=np.uint8)
    mask[10:2900, 5:1990] = 1  # long runs (several 5-bit groups) and shrinking ones (negative deltas)
    mask[100:120, 700:710] = 0
    counts = mask_utils.encode(np.asfortranarray(mask))["counts"]
    assert masks.compressed_runs(counts).tolist() == _column_runs(mask)


@pytest.mark.parametrize("counts, message", [
    ("Ue01o1", "sum to 741, but a 64x64 mask has 4096"),
    ("", "sum to 0"),
    ("o", "ends inside a number"),
    ("Ue0 1", "outside '0'..'o'"),
    ("\u00e90", "non-ASCII"),
    ("ooooooooo0", "too long"),
])
def test_bad_compressed_counts_are_refused(counts, message):
    with pytest.raises(masks.MaskError, match=message):
        masks.to_pycoco({"size": [64, 64], "counts": counts})


@pytest.mark.parametrize("counts, message", [
    ([-4, 20], "negative run length"),
    ([1.5, 14.5], "list of integers"),
    ([True, 15], "list of integers"),
    ([2**70], "too large"),
])
def test_bad_uncompressed_counts_are_refused(counts, message):
    with pytest.raises(masks.MaskError, match=message):
        masks.to_pycoco({"size": [4, 4], "counts": counts})


def test_every_entry_point_refuses_the_hanging_mask():
    for entry in (masks.decode_rle, masks.rle_area, masks.rle_bbox, masks.normalize_rle,
                  lambda r: masks.segmentation_to_rle(r, 64, 64), lambda r: masks.merge_rles([r])):
        with pytest.raises(masks.MaskError, match="sum to 741"):
            entry(HANGING_RLE)


def test_a_record_with_a_short_mask_is_refused_naming_the_field():
    good = masks.encode_rle(np.pad(np.ones((4, 4), np.uint8), ((2, 58), (2, 58))))
    record = {"id": "r1", "image": "a.png", "height": 64, "width": 64, "source": "t", "split": "train",
              "rounds": [{"question": "Segment it.", "answer": "[SEG]", "refs": [], "type": "referring",
                          "targets": [{"rle": good, "bbox": [2, 2, 4, 4]}]}]}
    validate_conversation(record)
    # with the box pycocotools computes for it, the record passed every check before the fix
    record["rounds"][0]["targets"][0] = {"rle": dict(HANGING_RLE), "bbox": [10, 37, 1, 1]}
    with pytest.raises(RecordError, match=r"record 'r1', round 0, field 'targets\[0\].rle.counts'.*sum to 741"):
        validate_conversation(record)


def test_image_paths_leaving_the_root_are_refused():
    record = {"id": "r1", "image": "coco/../../secret.png", "height": 4, "width": 4, "source": "t",
              "split": "train", "rounds": [{"question": "Segment it.", "answer": "There is none.",
                                            "refs": [], "type": "referring", "targets": []}]}
    with pytest.raises(RecordError, match=r"field 'image'.*leads out of the image root"):
        validate_conversation(record)
    record["image"] = "coco/../train/a.png"  # stays inside: fine
    validate_conversation(record)
