"""segllm.masks: RLE, polygons, boxes and the overlay renderer."""

import json

import numpy as np
import pytest
from PIL import Image

from segllm import masks


def _square(h=20, w=30, y=4, x=6, s=5):
    m = np.zeros((h, w), dtype=np.uint8)
    m[y:y + s, x:x + s] = 1
    return m


def test_rle_round_trip_has_str_counts_and_survives_json():
    m = _square()
    rle = masks.encode_rle(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [20, 30]
    back = masks.decode_rle(json.loads(json.dumps(rle)))
    assert back.dtype == np.uint8 and np.array_equal(back, m)
    assert masks.rle_area(rle) == 25
    assert masks.rle_bbox(rle) == [6.0, 4.0, 5.0, 5.0]


def test_uncompressed_and_bytes_rle_are_accepted():
    m = _square(h=4, w=3, y=0, x=0, s=2)
    column_major = m.flatten(order="F")
    counts, run, value = [], 0, 0  # runs start with zeros, column-major
    for v in column_major:
        if v != value:
            counts.append(run)
            run, value = 0, v
        run += 1
    counts.append(run)
    assert np.array_equal(masks.decode_rle({"size": [4, 3], "counts": counts}), m)
    compressed = masks.encode_rle(m)
    as_bytes = {"size": compressed["size"], "counts": compressed["counts"].encode()}
    assert masks.normalize_rle(as_bytes) == compressed


def test_polygon_to_rle_fills_the_polygon_and_merges_several():
    rle = masks.polygons_to_rle([[2, 2, 12, 2, 12, 8, 2, 8], [20, 2, 24, 2, 24, 6]], 16, 32)
    m = masks.decode_rle(rle)
    assert m[5, 7] == 1 and m[3, 22] == 1 and m[12, 12] == 0
    assert 60 <= masks.rle_area(rle) <= 90


@pytest.mark.parametrize("polygon, message", [([[1, 1, 5, 5]], "fewer than 3"), ([[1, 1, 5, 5, 6]], "odd"),
                                               ([], "no polygon")])
def test_bad_polygons_raise(polygon, message):
    with pytest.raises(masks.MaskError, match=message):
        masks.polygons_to_rle(polygon, 10, 10)


def test_segmentation_rle_of_wrong_size_is_rejected():
    with pytest.raises(masks.MaskError, match="does not match"):
        masks.segmentation_to_rle(masks.encode_rle(_square()), 10, 10)


def test_box_mask_round_trip_and_clipping():
    m = masks.box_to_mask([3, 2, 4, 5], 10, 10)
    assert m.sum() == 20 and masks.mask_to_bbox(m) == [3.0, 2.0, 4.0, 5.0]
    clipped = masks.box_to_mask([8, 8, 5, 5], 10, 10)
    assert clipped.sum() == 4
    assert masks.rle_area(masks.box_to_rle([0.5, 0.5, 2, 2], 10, 10)) == 9  # fractional box: rounded out
    assert masks.mask_to_bbox(np.zeros((4, 4))) == [0.0, 0.0, 0.0, 0.0]


def test_box_in_bounds_and_area_and_iou():
    assert masks.box_in_bounds([0, 0, 10, 10], 10, 10)
    assert not masks.box_in_bounds([5, 5, 10, 10], 10, 10)
    a, b = _square(s=4), _square(x=8, s=4)
    assert masks.mask_area(a) == 16
    assert masks.mask_iou(a, b) == pytest.approx(8 / 24)
    assert masks.mask_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0


def test_merge_rles_is_the_union():
    a, b = masks.encode_rle(_square()), masks.encode_rle(_square(x=20))
    assert masks.rle_area(masks.merge_rles([a, b])) == 50


def test_render_overlay_colours_masks_and_draws_labels():
    image = np.full((40, 60, 3), 200, dtype=np.uint8)
    left = np.zeros((40, 60), dtype=np.uint8)
    left[5:35, 2:20] = 1
    right = masks.encode_rle(np.pad(np.ones((30, 18), np.uint8), ((5, 5), (38, 4))))
    out = masks.render_overlay(image, [left, right], labels=["0", "1"], alpha=0.5)
    assert isinstance(out, Image.Image) and out.size == (60, 40)
    pixels = np.asarray(out).astype(int)
    assert (pixels[30, 25] == 200).all()  # outside every mask: untouched
    red = np.array(masks.PALETTE[0])
    assert np.abs(pixels[30, 10] - (200 + red) / 2).max() <= 1  # blended with the first colour
    assert not np.array_equal(pixels[30, 45], pixels[30, 10])  # second mask, second colour
    unlabeled = np.asarray(masks.render_overlay(image, [left, right])).astype(int)
    assert (pixels[5:15, 2:20] != unlabeled[5:15, 2:20]).any()  # the label is drawn at the box corner
    assert (image == 200).all()  # the input is not modified


def test_render_overlay_rejects_mismatched_sizes():
    with pytest.raises(masks.MaskError):
        masks.render_overlay(np.zeros((10, 10, 3), np.uint8), [np.zeros((5, 5))])
    with pytest.raises(ValueError, match="labels"):
        masks.render_overlay(np.zeros((10, 10, 3), np.uint8), [np.zeros((10, 10))], labels=["a", "b"])


def test_overlay_of_a_small_image_is_enlarged_so_labels_stay_small():
    from segllm.masks import render_overlay

    image = np.zeros((64, 48, 3), dtype=np.uint8)
    mask = np.zeros((64, 48), dtype=bool)
    mask[40:60, 30:44] = True
    out = render_overlay(image, [mask], labels=["round 0"], min_side=200)
    assert out.size == (48 * 5, 64 * 5)  # ceil(200 / 48) = 5, whole factor, nearest
    arr = np.asarray(out)
    # the mask is still visible beside its label: its lower-right part is blended colour
    assert arr[59 * 5 + 2, 43 * 5 + 2].any() and not arr[5, 5].any()
    assert render_overlay(image, [mask], labels=["r"]).size == (48, 64)  # default: input size
    huge = np.zeros((40, 4000, 3), dtype=np.uint8)
    assert render_overlay(huge, [], min_side=400).size == (4000, 40)  # capped at 4096 px
