"""Write tests/fixtures/revos and tests/fixtures/mevis in their released layouts.

Run from the repository root: ``python tests/video/make_fixtures.py``. The files are committed;
this script documents (and can redo) what they hold: two videos of 4 frames (32x24 px), a box
moving right; ReVOS with a referring, a reasoning, a two-object and a ``type_id`` 2 expression
plus ``mask_dict_foreground.json``; MeViS with a one-object and a two-object expression.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
W, H, FRAMES = 32, 24, 4


def rle(mask: np.ndarray) -> dict:
    out = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in out["size"]], "counts": out["counts"].decode("ascii")}


def box(x: int, y: int, w: int, h: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y:y + h, x:x + w] = True
    return m


def object_masks() -> dict[str, list[np.ndarray | None]]:
    """anno_id -> per-frame mask (None: not in the frame)."""
    return {
        "1": [box(2 + 4 * t, 4, 6, 6) for t in range(FRAMES)],                  # moves right
        "2": [box(20, 14, 8, 6) if t < 3 else None for t in range(FRAMES)],     # leaves
        "3": [box(4, 12, 5, 5) for t in range(FRAMES)],                         # second video
    }


def write_frames(root: str, video: str, names: list[str], masks: list[list]) -> None:
    folder = os.path.join(root, "JPEGImages", video)
    os.makedirs(folder, exist_ok=True)
    for t, name in enumerate(names):
        pixels = np.full((H, W, 3), 40, dtype=np.uint8)
        for color, per_frame in zip(((220, 60, 60), (60, 200, 60)), masks, strict=False):
            if per_frame[t] is not None:
                pixels[per_frame[t]] = color
        Image.fromarray(pixels).save(os.path.join(folder, f"{name}.jpg"), quality=90)


def dump(path: str, data) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)


def main() -> None:
    objects = object_masks()
    names = [f"{t:05d}" for t in range(FRAMES)]
    mask_dict = {k: [rle(m) if m is not None else None for m in v] for k, v in objects.items()}

    revos = os.path.join(HERE, "revos")
    dump(os.path.join(revos, "meta_expressions_valid_.json"), {"videos": {
        "MOSE/vid_a": {"vid_id": 0, "frames": names, "expressions": {
            "0": {"exp": "the red square", "obj_id": [0], "anno_id": [1], "type_id": 0},
            "1": {"exp": "which object keeps moving to the right?", "obj_id": [0],
                  "anno_id": [1], "type_id": 1},
            "2": {"exp": "both squares", "obj_id": [0, 1], "anno_id": [1, 2], "type_id": 0},
            "3": {"exp": "the purple giraffe", "obj_id": [], "anno_id": [], "type_id": 2}}},
        "vid_b": {"vid_id": 1, "frames": names, "expressions": {
            "0": {"exp": "what stays in the lower left?", "obj_id": [0], "anno_id": [3],
                  "type_id": 1}}}}})
    dump(os.path.join(revos, "mask_dict.json"), mask_dict)
    foreground = {
        "MOSE/vid_a": {"masks_rle": [rle(objects["1"][t] | (objects["2"][t] if objects["2"][t]
                                                             is not None else False))
                                     for t in range(FRAMES)]},
        "vid_b": {"masks_rle": [rle(objects["3"][t]) for t in range(FRAMES)]}}
    dump(os.path.join(revos, "mask_dict_foreground.json"), foreground)
    write_frames(revos, "MOSE/vid_a", names, [objects["1"], objects["2"]])
    write_frames(revos, "vid_b", names, [objects["3"]])

    mevis = os.path.join(HERE, "mevis", "valid_u")
    dump(os.path.join(mevis, "meta_expressions.json"), {"videos": {
        "vid_a": {"vid_id": 0, "frames": names, "expressions": {
            "0": {"exp": "the square moving right", "obj_id": [0], "anno_id": [1]},
            "1": {"exp": "two squares", "obj_id": [0, 1], "anno_id": [1, 2]}}}}})
    dump(os.path.join(mevis, "mask_dict.json"), {k: mask_dict[k] for k in ("1", "2")})
    write_frames(mevis, "vid_a", names, [objects["1"], objects["2"]])


if __name__ == "__main__":
    main()
