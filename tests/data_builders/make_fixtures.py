"""Write the small source fixtures under tests/fixtures/, each in its source's published layout.

Run from the repository root: ``python tests/data_builders/make_fixtures.py``. The files are
committed; this script documents (and can redo) what they hold. Images are 64x48 pixels.
Each fixture has at least one bad item, whose skip reason the tests check.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
from PIL import Image

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
W, H = 64, 48


def _write(rel: str, data) -> None:
    path = os.path.join(HERE, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if rel.endswith(".json") and not isinstance(data, str):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
    elif rel.endswith(".p"):
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=2)  # refer's pickles come from Python 2
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(data)


def _jpg(rel: str, w: int = W, h: int = H) -> None:
    path = os.path.join(HERE, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (w, h), (120, 140, 160)).save(path, quality=50)


def rect(x, y, w, h):
    """A rectangle as a COCO polygon."""
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def coco_ann(ann_id, image_id, cat, x, y, w, h, **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": [rect(x, y, w, h)],
            "area": float(w * h), "bbox": [x, y, w, h], "iscrowd": 0, **extra}


COCO_CATS = [{"id": 1, "name": "person", "supercategory": "person"},
             {"id": 62, "name": "chair", "supercategory": "furniture"},
             {"id": 18, "name": "dog", "supercategory": "animal"},
             {"id": 44, "name": "bottle", "supercategory": "kitchen"}]


def coco_image(image_id, year="train2014"):
    prefix = f"COCO_{year}_" if year == "train2014" else ""
    return {"id": image_id, "file_name": f"{prefix}{image_id:012d}.jpg", "height": H, "width": W,
            "license": 1, "coco_url": f"http://images.cocodataset.org/{year}/{image_id:012d}.jpg"}


def refcoco():
    """Image 100: two people and a chair (train); 200: held-out (val); 300: train with a
    2-point polygon; 400: train whose image file is missing."""
    images = [coco_image(i) for i in (100, 200, 300, 400)]
    anns = [coco_ann(1, 100, 1, 2, 10, 12, 30), coco_ann(2, 100, 1, 48, 10, 12, 30),
            coco_ann(3, 100, 62, 26, 20, 12, 20), coco_ann(4, 200, 18, 10, 10, 20, 20),
            coco_ann(5, 300, 44, 5, 5, 10, 10), coco_ann(6, 300, 1, 30, 5, 20, 30),
            coco_ann(7, 400, 1, 5, 5, 20, 20)]
    anns[4]["segmentation"] = [[5, 5, 15, 5]]  # fewer than 3 points

    def ref(ref_id, ann_id, image_id, cat, split, *sents):
        return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "category_id": cat,
                "split": split, "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
                "sent_ids": [ref_id * 10 + i for i in range(len(sents))],
                "sentences": [{"sent": s, "raw": s, "tokens": s.split(), "sent_id": ref_id * 10 + i}
                              for i, s in enumerate(sents)]}

    refs = [ref(1, 1, 100, 1, "train", "man on the left", "left guy"),
            ref(2, 2, 100, 1, "train", "man on right"),
            ref(3, 3, 100, 62, "train", "empty chair in the middle"),
            ref(4, 4, 200, 18, "val", "brown dog"),
            ref(5, 5, 300, 44, "train", "green bottle"),
            ref(6, 6, 300, 1, "train", "person standing"),
            ref(7, 7, 400, 1, "testA", "person")]
    refs[6]["split"] = "train"
    _write("refcoco/refs(unc).p", refs)
    _write("refcoco/instances.json", {"info": {}, "licenses": [], "images": images, "annotations": anns,
                                      "categories": COCO_CATS})
    for i in (100, 200, 300):  # 400 has no file on purpose
        _jpg(f"coco_images/train2014/COCO_train2014_{i:012d}.jpg")


def coco():
    """Image 200 is RefCOCO val (excluded); 500 has two people, a dog, a crowd region and a
    box outside the image."""
    images = [coco_image(200, "train2017"), coco_image(500, "train2017")]
    for img in images:
        img["file_name"] = f"{img['id']:012d}.jpg"
    anns = [coco_ann(11, 200, 18, 10, 10, 20, 20),
            coco_ann(12, 500, 1, 2, 10, 12, 30), coco_ann(13, 500, 1, 48, 10, 12, 30),
            coco_ann(14, 500, 18, 24, 28, 14, 14),
            coco_ann(15, 500, 1, 20, 0, 10, 8, iscrowd=1),
            coco_ann(16, 500, 62, 60, 40, 20, 20)]
    anns[4]["segmentation"] = {"size": [H, W], "counts": [20 * H, 8, 40, 8, W * H - 20 * H - 56]}
    anns[5]["segmentation"] = [rect(60, 40, 4, 8)]  # box says 20x20: beyond the image
    _write("coco/instances_train2017.json", {"info": {}, "licenses": [], "images": images,
                                              "annotations": anns, "categories": COCO_CATS})
    # COCO-2017 val holds image 300, a RefCOCO *training* image (the reverse leakage rule)
    val = coco_image(300, "val2017")
    _write("coco/instances_val2017.json", {"info": {}, "licenses": [], "images": [val],
                                            "annotations": [coco_ann(41, 300, 44, 5, 5, 10, 10)],
                                            "categories": COCO_CATS})


def lvis():
    """LVIS v1: images carry coco_url and neg_category_ids."""
    cats = [{"id": 1, "name": "apple", "synonyms": ["apple"], "frequency": "f"},
            {"id": 2, "name": "banana", "synonyms": ["banana"], "frequency": "f"},
            {"id": 3, "name": "traffic_light", "synonyms": ["traffic_light"], "frequency": "c"}]
    images = [{"id": 600, "height": H, "width": W, "coco_url": "http://images.cocodataset.org/train2017/000000000600.jpg",
               "neg_category_ids": [3], "not_exhaustive_category_ids": [], "license": 1},
              {"id": 200, "height": H, "width": W, "coco_url": "http://images.cocodataset.org/train2017/000000000200.jpg",
               "neg_category_ids": [], "not_exhaustive_category_ids": [], "license": 1}]
    anns = [coco_ann(21, 600, 1, 4, 4, 10, 10), coco_ann(22, 600, 1, 40, 4, 10, 10),
            coco_ann(23, 600, 2, 20, 30, 20, 10), coco_ann(24, 200, 2, 4, 4, 10, 10)]
    for a in anns:
        a.pop("iscrowd")
    _write("lvis/lvis_v1_train.json", {"info": {}, "licenses": [], "images": images, "annotations": anns,
                                        "categories": cats})


def paco():
    """Mug (object) with a handle and a body (parts, obj_ann_id -> the mug); a part whose
    object annotation is missing."""
    cats = [{"id": 1, "name": "mug", "supercategory": "OBJECT"},
            {"id": 2, "name": "mug:handle", "supercategory": "PART"},
            {"id": 3, "name": "mug:body", "supercategory": "PART"},
            {"id": 4, "name": "cup", "supercategory": "OBJECT"}]
    images = [{"id": 700, "file_name": "train2017/000000000700.jpg", "height": H, "width": W}]
    anns = [coco_ann(31, 700, 1, 10, 10, 30, 24, obj_ann_id=31),
            coco_ann(32, 700, 2, 30, 16, 10, 10, obj_ann_id=31),
            coco_ann(33, 700, 3, 10, 10, 20, 24, obj_ann_id=31),
            coco_ann(34, 700, 4, 46, 10, 12, 12, obj_ann_id=34),
            coco_ann(35, 700, 2, 50, 30, 4, 4, obj_ann_id=99)]
    _write("paco/paco_lvis_v1_train.json", {"info": {}, "images": images, "annotations": anns,
                                             "categories": cats, "attributes": []})


PPP_CLASSES = (
    "aeroplane bicycle bird boat bottle bus car cat chair cow table dog horse motorbike person "
    "pottedplant sheep sofa train tvmonitor bag basket bed bedclothes bench bird_cage board book "
    "bowl box bridge brush bucket building cabinet cage case ceiling cloth computer counter cup "
    "curtain cushion door fence fire_place floor flower food fridge grandstand grass ground "
    "horse-drawn_carriage keyboard laptop light mat metal mirror mountain mouse pack paper picture "
    "pillow plant plate platform pole poster pot road rock rope rug sand sculpture shelves sidewalk "
    "sign sink sky smoke snow speaker stage stair tent toy track tree truck wall water window "
    "wineglass wood").split()
PPP_CLASSES = [c.replace("_", " ") for c in PPP_CLASSES]
PPP_PARTS = {
    "aeroplane": "body stern lwing rwing tail engine wheel",
    "bottle": "cap body",
    "person": "head leye reye lear rear lebrow rebrow nose mouth hair torso neck llarm luarm lhand "
              "rlarm ruarm rhand llleg luleg lfoot rlleg ruleg rfoot",
    "tvmonitor": "screen frame",
}


def _flow(items) -> str:
    return ", ".join(items)


def pascal_parts():
    """The toolkit's two spec layouts: ``ppp_datasetspec.yaml`` (v2.0: sids and pids by the
    order of ``scene_class2part_classes``, countable part pids folded by
    ``countable_pids_groupings``) and ``ppp_100_72.yaml`` (v1.0: ``sid2name`` +
    ``sid2pids_groups``, unnamed groups of file pids), plus a named ``part_groupings`` file.
    Label map: a person (sid 15, instance 1) with raw PASCAL-Part pids head 1, left eye 2,
    torso 11, neck 12 and unlabelled part pixels (pid 0); a second person with no parts; an
    aeroplane (sid 1) with its body (pid 1) and two engines stored as countable pids 7 and 8
    (both the part "engine", pid 6); sky (sid 84, semantic only)."""
    uid = np.zeros((H, W), dtype=np.int32)
    uid[:10, :] = 84
    uid[10:16, 5:15] = 15_001_01
    uid[16:18, 5:15] = 15_001_02
    uid[18:20, 5:15] = 15_001_12
    uid[20:40, 5:15] = 15_001_11
    uid[40:44, 5:15] = 15_001_00
    uid[12:40, 40:52] = 15_002
    uid[20:30, 20:34] = 1_001_01
    uid[30:34, 20:26] = 1_001_07
    uid[30:34, 28:34] = 1_001_08
    path = os.path.join(HERE, "pascal_parts/labels/training/2008_000001.tif")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(uid).save(path)
    classes = "\n".join(f"  {c}: [{_flow(PPP_PARTS.get(c, '').split())}]," for c in PPP_CLASSES)
    things = _flow(PPP_CLASSES[:20])
    _write("pascal_parts/ppp_datasetspec.yaml",
           "version: '2.0'\nname: PASCAL Panoptic Parts\n"
           f"scene_class2part_classes: {{\n{classes}\n}}\n"
           f"scene_classes_with_instances: [\n  {things}]\n"
           "countable_pids_groupings: {\n  aeroplane: {\n"
           f"    engine: [{_flow(str(p) for p in range(6, 16))}],\n"
           f"    wheel: [{_flow(str(p) for p in range(16, 26))}],\n  }},\n}}\n")
    sid2name = _flow(f"{i}: {c}" for i, c in enumerate(PPP_CLASSES, start=1))
    _write("pascal_parts/ppp_100_72.yaml",
           "version: 1.0\ncomments:\n  - grouped parts\n"
           f"valid_sids: [{_flow(str(i) for i in range(1, 100))}]\nmax_sid: 99\n"
           f"sid2name: {{{sid2name}, -1: unlabeled}}\n"
           "sid2pids_groups: {\n"
           "  1: [[1], [2], [3, 4], [5], [6, 7, 8, 9, 10, 11, 12, 13, 14, 15], "
           "[16, 17, 18, 19, 20, 21, 22, 23, 24, 25]],\n"
           "  15: [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12], [11], [13, 15, 16, 18], [14, 17], "
           "[19, 21, 22, 24], [20, 23]],\n"
           "  20: [[1]]}\n")
    _write("pascal_parts/part_groupings.yaml",
           "version: 2.0\ndataset_spec_path: ppp_datasetspec.yaml\npart_groupings: {\n"
           "  aeroplane: {\n    body: [body],\n    engine: [engine],\n    wing: [lwing, rwing],\n  },\n"
           "  person: {\n    head: [head, leye, reye, lear, rear, lebrow, rebrow, nose, mouth, hair],\n"
           "    torso: [torso, neck],\n  },\n}\n")


def visual_genome():
    """A man holding a cup and a woman holding the same cup (two subjects, one answer); a
    zero-width box; image 2 is COCO 200 (RefCOCO val, excluded)."""
    def obj(oid, name, x, y, w, h, plural=False):
        o = {"object_id": oid, "x": x, "y": y, "w": w, "h": h, "synsets": []}
        o["names" if plural else "name"] = [name] if plural else name
        return o

    rels = [{"image_id": 1, "relationships": [
        {"relationship_id": 1, "predicate": "holding", "synsets": [],
         "subject": obj(11, "man", 2, 5, 14, 40, plural=True), "object": obj(12, "cup", 20, 20, 8, 8)},
        {"relationship_id": 2, "predicate": "HOLDING", "synsets": [],
         "subject": obj(13, "man", 40, 5, 14, 40, plural=True), "object": obj(12, "cup", 20, 20, 8, 8)},
        {"relationship_id": 3, "predicate": "on", "synsets": [],
         "subject": obj(14, "hat", 5, 0, 0, 4), "object": obj(11, "man", 2, 5, 14, 40, plural=True)}]},
        {"image_id": 2, "relationships": [
            {"relationship_id": 4, "predicate": "near", "synsets": [],
             "subject": obj(21, "dog", 2, 2, 10, 10), "object": obj(22, "tree", 30, 2, 10, 30)}]}]
    images = [{"image_id": 1, "width": W, "height": H, "url": "https://cs.stanford.edu/people/rak248/VG_100K/1.jpg",
               "coco_id": None, "flickr_id": 123},
              {"image_id": 2, "width": W, "height": H, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/2.jpg",
               "coco_id": 200, "flickr_id": None}]
    _write("visual_genome/relationships.json", rels)
    _write("visual_genome/image_data.json", images)
    visual_genome_objects()


def visual_genome_objects():
    """objects.json of image 1: the man, the cup and a table in no relationship, a box past
    the image's right edge."""
    def obj(oid, name, x, y, w, h):
        return {"object_id": oid, "x": x, "y": y, "w": w, "h": h, "names": [name], "synsets": []}

    _write("visual_genome/objects.json", [{"image_id": 1, "image_url": "https://cs.stanford.edu/people/rak248/VG_100K/1.jpg",
                                           "objects": [obj(11, "man", 2, 5, 14, 40), obj(12, "cup", 20, 20, 8, 8),
                                                       obj(15, "table", 10, 28, 40, 20), obj(16, "lamp", 60, 0, 10, 10)]}])


def _png(rel: str, array: np.ndarray) -> None:
    path = os.path.join(HERE, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def ade20k():
    """Wall (1) on top, floor (4) below, a tiny person (13) under min_area, 0 = other."""
    labels = np.zeros((H, W), dtype=np.uint8)
    labels[:20, :] = 1
    labels[30:, :] = 4
    labels[22:25, 30:33] = 13
    _png("ade20k/ADEChallengeData2016/annotations/training/ADE_train_00000001.png", labels)
    _write("ade20k/ADEChallengeData2016/objectInfo150.csv",
           "Idx,Ratio,Train,Val,Name\n1,0.1576,11664,1172,wall\n2,0.1072,6046,612,building;edifice\n"
           "3,0.0878,8265,796,sky\n4,0.0621,9336,917,floor;flooring\n13,0.0171,6871,661,person;individual;someone\n")


def coco_stuff():
    """Person (value 0 = id 1) and sky-other (value 156 = id 157), 255 unlabelled; a second
    map that is RefCOCO val image 200."""
    labels = np.full((H, W), 255, dtype=np.uint8)
    labels[:16, :] = 156
    labels[20:44, 10:30] = 0
    _png("coco_stuff/stuffthingmaps/train2017/000000000800.png", labels)
    _png("coco_stuff/stuffthingmaps/train2017/000000000200.png", labels)
    _write("coco_stuff/labels.txt", "0: unlabeled\n1: person\n2: bicycle\n157: sky-other\n")


def reasonseg():
    """good: a target with an ignore polygon inside; malformed: truncated JSON; short: a
    2-point polygon; nofile: JSON without its image."""
    good = {"text": ["the thing you would sit on to rest"], "is_sentence": True, "shapes": [
        {"label": "target", "points": [[10, 10], [40, 10], [40, 40], [10, 40]], "shape_type": "polygon",
         "group_id": None, "flags": {}, "line_color": None, "fill_color": None},
        {"label": "ignore", "points": [[20, 20], [30, 20], [30, 30], [20, 30]], "shape_type": "polygon",
         "group_id": None, "flags": {}, "line_color": None, "fill_color": None},
        {"label": "flag", "points": [[0, 0], [5, 0], [5, 5]], "shape_type": "polygon"}],
        "imagePath": "good.jpg", "imageHeight": H, "imageWidth": W, "version": "4.5.6"}
    _write("reasonseg/train/good.json", good)
    _jpg("reasonseg/train/good.jpg")
    _write("reasonseg/train/malformed.json", '{"text": ["a cup"], "is_sentence": false, "shapes": [')
    _jpg("reasonseg/train/malformed.jpg")
    short = dict(good, shapes=[{"label": "target", "points": [[1, 1], [9, 9]], "shape_type": "polygon"}],
                 is_sentence=False, text=["a stick"])
    _write("reasonseg/train/short.json", short)
    _jpg("reasonseg/train/short.jpg")
    _write("reasonseg/train/nofile.json", dict(good, imagePath="nofile.jpg"))


def _rle(x, y, w, h):
    from pycocotools import mask as mask_utils

    m = np.zeros((H, W), dtype=np.uint8, order="F")
    m[y:y + h, x:x + w] = 1
    r = mask_utils.encode(m)
    return {"size": r["size"], "counts": r["counts"].decode("ascii")}


def grandf():
    """HA layout (phrase -> token_positives + rle_masks; one overlapping phrase), RefCOCOg-GCG
    (one-key dicts with polygon refs; image 100 from coco_images) and Flickr30k-GCG (COCO format
    with tokens_positive and sam_mask)."""
    caption = "A man in a red shirt holds a bag."
    ha = [{"file_name": "sa_1.jpg", "caption": caption, "groundings": {
        "a bag": {"token_positives": [27, 32], "rle_masks": [_rle(40, 20, 10, 10)]},
        "A man in a red shirt": {"token_positives": [0, 20], "rle_masks": [_rle(2, 2, 20, 40), _rle(22, 10, 4, 4)]},
        "red shirt": {"token_positives": [11, 20], "rle_masks": [_rle(4, 10, 10, 10)]}}}]
    _write("grandf/GranDf_HA_GCG_train.json", ha)
    refcocog = [{"COCO_train2014_000000000100.jpg": {
        "img_file_name": "COCO_train2014_000000000100.jpg",
        "caption": "A man on the left stands near an empty chair.",
        "refs": [{"sentence": "a man on the left", "segmentation": [rect(2, 10, 12, 30)], "bbox": [2, 10, 12, 30]},
                 {"sentence": "an empty chair", "segmentation": [rect(26, 20, 12, 20)], "bbox": [26, 20, 12, 20]},
                 {"sentence": "a flying car", "segmentation": [rect(1, 1, 2, 2)], "bbox": [1, 1, 2, 2]}]}}]
    _write("grandf/RefCOCOg_GCG_train.json", refcocog)
    flickr_caption = "Two dogs play on the grass."
    flickr = {"images": [{"id": 1, "file_name": "1000092795.jpg", "height": H, "width": W,
                          "caption": flickr_caption}],
              "annotations": [
                  {"id": 1, "image_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0, "category_id": 1,
                   "tokens_positive": [[0, 8]], "sam_mask": _rle(2, 2, 10, 10)},
                  {"id": 2, "image_id": 1, "bbox": [30, 2, 10, 10], "area": 100, "iscrowd": 0, "category_id": 1,
                   "tokens_positive": [[0, 8]], "sam_mask": _rle(30, 2, 10, 10)},
                  {"id": 3, "image_id": 1, "bbox": [0, 30, 64, 18], "area": 1152, "iscrowd": 0, "category_id": 1,
                   "tokens_positive": [[21, 26]], "sam_mask": _rle(0, 30, 64, 18)}],
              "categories": [{"id": 1, "name": "object"}]}
    _write("grandf/flickr_mergedGT_GCG_train.json", flickr)
    gcg_eval()


def gcg_eval():
    """GLaMM's official GCG evaluation pair (annotations/val_test/): COCO instances with one RLE
    per phrase (category 1) and COCO captions whose annotation holds the caption and its
    ``labels``; the i-th label goes with the image's i-th mask. Image ids are SA-1B stems."""
    items = [("sa_10010541", "A man in a red shirt holds a bag.", [("A man in a red shirt", (2, 2, 20, 40)),
                                                                   ("a bag", (40, 20, 10, 10))]),
             ("sa_10014079", "Two dogs play on the grass.", [("Two dogs", (2, 2, 30, 10)),
                                                             ("the grass", (0, 30, 64, 18))])]
    images = [{"id": stem, "file_name": f"{stem}.jpg", "height": H, "width": W} for stem, _, _ in items]
    masks, captions = [], []
    for stem, caption, phrases in items:
        captions.append({"id": len(captions) + 1, "image_id": stem, "caption": caption,
                         "labels": [label for label, _ in phrases]})
        for _, (x, y, w, h) in phrases:
            masks.append({"id": len(masks) + 1, "image_id": stem, "category_id": 1, "segmentation": _rle(x, y, w, h),
                          "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    _write("grandf/val_test/val_gcg_coco_mask_gt.json",
           {"images": images, "annotations": masks, "categories": [{"id": 1, "name": "object"}]})
    _write("grandf/val_test/val_gcg_coco_caption_gt.json", {"images": images, "annotations": captions})


def coco_panoptic():
    """COCO panoptic (panoptic_train2017.json + PNGs, ids as R + 256 G + 256^2 B): image 500 with
    two people (one a crowd segment), a dog, sky (stuff) and a segment of an unknown category;
    image 200 is RefCOCO val (excluded from training)."""
    cats = [{"id": 1, "name": "person", "supercategory": "person", "isthing": 1, "color": [220, 20, 60]},
            {"id": 18, "name": "dog", "supercategory": "animal", "isthing": 1, "color": [0, 0, 142]},
            {"id": 187, "name": "sky-other-merged", "supercategory": "sky", "isthing": 0,
             "color": [70, 130, 180]}]
    boxes = {500: [(1, 1, (2, 10, 12, 30), 0), (70_000, 1, (48, 10, 12, 30), 1),
                   (2 * 65_536 + 5, 18, (24, 28, 14, 14), 0), (300, 187, (0, 0, 64, 8), 0),
                   (301, 99, (30, 40, 4, 4), 0)],
             200: [(7, 18, (10, 10, 20, 20), 0)]}
    annotations, images = [], []
    for image_id, segments in boxes.items():
        ids = np.zeros((H, W), dtype=np.int64)
        infos = []
        for seg_id, cat, (x, y, w, h), crowd in segments:
            ids[y:y + h, x:x + w] = seg_id
            infos.append({"id": seg_id, "category_id": cat, "iscrowd": crowd, "bbox": [x, y, w, h],
                          "area": w * h})
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65_536], axis=-1)
        _png(f"coco_panoptic/panoptic_train2017/{image_id:012d}.png", rgb)
        annotations.append({"image_id": image_id, "file_name": f"{image_id:012d}.png", "segments_info": infos})
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": H, "width": W})
    _write("coco_panoptic/panoptic_train2017.json", {"info": {}, "licenses": [], "images": images,
                                                     "annotations": annotations, "categories": cats})


def foreground():
    """DUTS-TR layout: image a with an anti-aliased mask (values 0, 100, 255: only 255 is
    foreground), image b whose mask is empty, mask c without an image."""
    for stem in ("a", "b"):
        _jpg(f"foreground/DUTS-TR/DUTS-TR-Image/{stem}.jpg")
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[10:30, 20:40] = 255
    mask[30, 20:40] = 100
    _png("foreground/DUTS-TR/DUTS-TR-Mask/a.png", mask)
    _png("foreground/DUTS-TR/DUTS-TR-Mask/b.png", np.zeros((H, W)))
    _png("foreground/DUTS-TR/DUTS-TR-Mask/c.png", mask)


if __name__ == "__main__":
    for make in (refcoco, coco, lvis, paco, pascal_parts, visual_genome, ade20k, coco_stuff, reasonseg, grandf,
                 coco_panoptic, foreground):
        make()
    print("fixtures written under", HERE)
