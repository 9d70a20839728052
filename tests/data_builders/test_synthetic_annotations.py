"""Synthetic annotations: masks from boxes through SAM ("syn-m", on a tiny random SAM) and
captions for boxes from a captioner, written back as unified records marked synthetic."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from segllm import cli
from segllm.data_builders.base import BuildStats
from segllm.data_builders.captioner import (
    TemplateCaptioner,
    caption_record,
    colour_name,
    place_phrase,
)
from segllm.data_builders.syn_masks import (
    SamBoxSegmenter,
    SynMaskBuilder,
    add_synthetic_masks,
    box_xyxy,
)
from segllm.data_builders.synthetic import COLOURS
from segllm.masks import decode_rle, encode_rle
from segllm.modeling.decoders.sam import SAMConfig, build_sam
from segllm.records import read_jsonl, validate_unified

H, W = 48, 64
TINY_SAM = SAMConfig(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
                     window_size=2, image_size=64, patch_size=16, prompt_embed_dim=32, mask_in_chans=4,
                     decoder_depth=2, decoder_mlp_dim=64, decoder_num_heads=2, iou_head_hidden_dim=32)


def detection_record():
    return {"id": "vg-1", "image": "1.png", "height": H, "width": W, "source": "visual-genome", "split": "train",
            "task": "detection", "annotations": [
                {"text": "man", "bbox": [2.0, 5.0, 14.0, 40.0], "rle": None},
                {"text": "cup", "bbox": [20.0, 20.0, 8.0, 8.0], "rle": None},
                {"text": "sky", "bbox": [0.0, 0.0, 64.0, 4.0], "rle": encode_rle(np.pad(np.ones((4, W)), ((0, H - 4), (0, 0))))}]}


class BoxFiller:
    """A segmenter whose mask is the box's inner quarter, empty for boxes under 10 px wide."""

    name = "box-filler"

    def masks(self, image, boxes_xyxy):
        out = np.zeros((len(boxes_xyxy), *image.shape[:2]), dtype=bool)
        for k, (x0, y0, x1, y1) in enumerate(boxes_xyxy.astype(int)):
            if x1 - x0 >= 10:
                out[k, (y0 + y1) // 2:y1, (x0 + x1) // 2:x1] = True
        return out


def test_syn_m_fills_box_only_annotations_and_marks_them():
    stats = BuildStats("syn-m")
    out = add_synthetic_masks(detection_record(), np.zeros((H, W, 3), np.uint8), BoxFiller(), stats)
    validate_unified(out)
    man, cup, sky = out["annotations"]
    assert out["task"] == "instance" and out["source"] == "visual-genome-syn-m"
    assert out["meta"]["synthetic_by"] == {"mask": "box-filler"}
    assert man["synthetic"] == ["mask"] and man["bbox"] == [2.0, 5.0, 14.0, 40.0]  # annotated box kept
    assert decode_rle(man["rle"]).sum() == 7 * 20
    assert cup["rle"] is None and "synthetic" not in cup  # empty mask: stays box-only
    assert stats.skipped["empty_mask"] == 1
    assert sky == detection_record()["annotations"][2]  # had a mask: untouched


def test_box_to_sam_box_clips_to_the_image():
    assert box_xyxy([-2, 40, 10, 20], H, W) == [0.0, 40, 8, 48.0]


@pytest.fixture()
def tiny_sam_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny_sam.pth"
    torch.save(build_sam(TINY_SAM).state_dict(), path)
    return path


def test_syn_m_on_a_tiny_sam_writes_masks_of_the_image_size(tmp_path, tiny_sam_file):
    with pytest.raises(ValueError, match="not an official SAM checkpoint"):
        SamBoxSegmenter.from_checkpoint(tiny_sam_file)
    segmenter = SamBoxSegmenter.from_checkpoint(tiny_sam_file, config=TINY_SAM)
    assert segmenter.name == "sam:custom:tiny_sam.pth"
    image = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    masks = segmenter.masks(image, np.array([[2, 5, 16, 45], [20, 20, 28, 28]], dtype=np.float32))
    assert masks.shape == (2, H, W) and masks.dtype == bool
    # the whole path: a unified JSONL with images in, validated records out
    Image.fromarray(image).save(tmp_path / "1.png")
    source = tmp_path / "visual-genome.unified.jsonl"
    source.write_text(json.dumps(detection_record()) + "\n")
    builder = SynMaskBuilder(source, segmenter, image_root=str(tmp_path))
    assert builder.name == "visual-genome-syn-m"
    stats = builder.build(tmp_path / "out.jsonl")
    (record,) = read_jsonl(tmp_path / "out.jsonl", kind="unified")
    filled = [a for a in record["annotations"][:2] if a["rle"] is not None]
    assert len(filled) + stats.skipped["empty_mask"] == 2
    assert all(a["rle"]["size"] == [H, W] and a["synthetic"] == ["mask"] for a in filled)


def test_cli_syn_m_needs_a_checkpoint_and_refuses_a_foreign_file(tmp_path, capsys, tiny_sam_file):
    source = tmp_path / "vg.unified.jsonl"
    source.write_text(json.dumps(detection_record()) + "\n")
    args = ["build-data", "syn-m", "--input", str(source), "--image-root", str(tmp_path), "--output", str(tmp_path)]
    assert cli.main(args) == 2 and "--sam-checkpoint" in capsys.readouterr().err
    assert cli.main(args + ["--sam-checkpoint", str(tiny_sam_file)]) == 2
    assert "not an official SAM checkpoint" in capsys.readouterr().err


def scene():
    """Two red circles (left small, right large) and a blue square at the top, on white."""
    image = np.full((H, W, 3), 250, np.uint8)
    yy, xx = np.mgrid[:H, :W]
    left = (yy - 30) ** 2 + (xx - 10) ** 2 <= 16
    right = (yy - 30) ** 2 + (xx - 50) ** 2 <= 64
    square = np.zeros((H, W), bool)
    square[2:10, 28:36] = True
    for mask, colour in ((left, "red"), (right, "red"), (square, "blue")):
        image[mask] = COLOURS[colour]
    record = {"id": "s", "image": "s.png", "height": H, "width": W, "source": "synthetic", "split": "train",
              "task": "instance", "annotations": []}
    for name, mask in (("circle", left), ("circle", right), ("square", square)):
        ys, xs = np.nonzero(mask)
        record["annotations"].append({"text": name, "rle": encode_rle(mask), "bbox": [
            float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]})
    return image, record


def test_template_captions_are_true_of_the_scene():
    image, record = scene()
    captioner = TemplateCaptioner()
    left, right, square = (captioner.captions(image, a, record) for a in record["annotations"])
    assert left[0] == "the red circle on the left" and "the smaller red circle" in left
    assert right[0] == "the red circle on the right" and "the larger red circle" in right
    assert square[0] == "the blue square at the top"
    sky = {"text": "sky", "isthing": False, "bbox": [0.0, 0.0, 64.0, 12.0], "rle": None}
    assert captioner.captions(image, sky, record)[:2] == ["the sky at the top", "the sky"]
    assert len(set(left)) == len(left) <= 5
    assert colour_name(np.array([[230, 50, 45]] * 3 + [[250, 250, 250]])) == "red"
    assert place_phrase([0, 0, 10, 10], H, W) == "at the top left"


def test_captions_become_synthetic_referring_records_without_ambiguous_ones():
    image, record = scene()
    record["annotations"].append(dict(record["annotations"][2], iscrowd=True))
    stats = BuildStats("syn")
    out = caption_record(record, image, TemplateCaptioner(), stats)
    validate_unified(out)
    assert out["task"] == "referring" and out["source"] == "synthetic-syn"
    assert out["meta"]["synthetic_by"] == {"text": "template"}
    left, right, square = out["annotations"]
    # "the red circle" names both circles: dropped from both
    assert "the red circle" not in left["texts"] + right["texts"]
    assert left["text"] == left["texts"][0] == "the red circle on the left"
    assert square["synthetic"] == ["text"] and square["rle"] == record["annotations"][2]["rle"]
    assert stats.skipped["crowd_annotation"] == 1


def test_cli_syn_captions_writes_beside_the_input(tmp_path, capsys):
    image, record = scene()
    Image.fromarray(image).save(tmp_path / "s.png")
    semantic = dict(record, id="s2", task="semantic")
    again = dict(record, id="s3", task="panoptic")
    (tmp_path / "shapes.unified.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (record, semantic, again)))
    assert cli.main(["build-data", "syn-captions", "--input", str(tmp_path / "shapes.unified.jsonl"),
                     "--image-root", str(tmp_path), "--output", str(tmp_path), "--no-progress"]) == 0
    (out,) = read_jsonl(tmp_path / "shapes-syn.unified.jsonl", kind="unified")
    assert [a["text"] for a in out["annotations"]] == [
        "the red circle on the left", "the red circle on the right", "the blue square at the top"]
    summary = json.loads(capsys.readouterr().out)
    assert summary["records_written"] == 1
    assert summary["skipped_by_reason"] == {"image_already_captioned": 1, "not_an_object_record": 1}
    assert cli.main(["build-data", "syn-captions", "--input", str(tmp_path / "shapes.unified.jsonl"),
                     "--output", str(tmp_path)]) == 2
    assert "--image-root" in capsys.readouterr().err
