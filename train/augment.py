"""Training-time augmentation of one conversation (record + image), per data source.

Three transforms, each off by default (SegLLM trains without augmentation):

- **Horizontal flip** (``hflip``: its probability). Image and masks are mirrored and, so that
  the words stay true, "left" and "right" swap in every question and answer ("the shape
  closest to the left of <ref:0>" becomes "... right of ..."; "leftmost" <-> "rightmost";
  a part named "left eye" is the right eye of the mirrored person).
- **Scale jitter** (``scale``: a range of factors). The picture is resized by a random factor;
  below 1 it is pasted at a random place on a canvas of the original size (mean colour), so
  nothing leaves the frame. Above 1 it is cropped back to the original size only where random
  crops are allowed (``crop``) and never for records with referring, positional or
  interactional rounds: QueryMeldNet leaves random crops out of referring data, since a crop
  can cut away the object a "left of" question counts from. Otherwise the enlarged picture is
  kept whole. A crop that would empty a target is not made.
- **Colour jitter** (``color``: the largest relative change of brightness, contrast and
  saturation). No hue change: questions name colours ("the red circle").

Each target's mask, tight ``bbox``, ``ann_bbox`` and ``ignore_rle`` follow the pixels; the
record's ``height`` and ``width`` follow the picture. Randomness comes from the generator the
caller passes (seeded by the stream position), so a resumed run repeats the same draws.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np

from segllm.masks import decode_rle, encode_rle, mask_to_bbox

SIDE_WORDS = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost",
              "lefthand": "righthand", "righthand": "lefthand"}
SIDE_PATTERN = re.compile(r"\b(" + "|".join(SIDE_WORDS) + r")\b", re.IGNORECASE)
NO_CROP_TYPES = ("referring", "positional", "interactional")


@dataclass
class AugmentArgs:
    """A source's augmentation (``data.sources.N.augment`` in a training YAML); all off by default."""

    hflip: float = 0.0  # probability of a horizontal flip (left/right words swapped)
    scale: tuple[float, float] = (1.0, 1.0)  # scale-jitter factor range
    crop: bool = False  # crop enlarged pictures back to size (never for referring-type records)
    color: float = 0.0  # brightness / contrast / saturation change, at most this fraction

    def __post_init__(self):
        lo, hi = self.scale
        if not 0 <= self.hflip <= 1:
            raise ValueError(f"augment.hflip is a probability in [0, 1], got {self.hflip}")
        if not 0 < lo <= hi:
            raise ValueError(f"augment.scale must be [low, high] with 0 < low <= high, got {list(self.scale)}")
        if not 0 <= self.color < 1:
            raise ValueError(f"augment.color must be in [0, 1), got {self.color}")

    @property
    def enabled(self) -> bool:
        return self.hflip > 0 or tuple(self.scale) != (1.0, 1.0) or self.color > 0


def swap_sides(text: str) -> str:
    """"left" <-> "right" (and "leftmost" <-> "rightmost"), keeping capitals."""
    def swap(match: re.Match) -> str:
        word = match.group(0)
        other = SIDE_WORDS[word.lower()]
        return other.capitalize() if word[0].isupper() else other
    return SIDE_PATTERN.sub(swap, text)


def augment(record: dict, image: np.ndarray, args: AugmentArgs, rng: random.Random) -> tuple[dict, np.ndarray]:
    """A new (record, image) with the source's augmentation applied; the inputs are not changed."""
    if not args.enabled:
        return record, image
    record = _copy_record(record)
    if args.hflip > 0 and rng.random() < args.hflip:
        record, image = _flip(record, image)
    lo, hi = args.scale
    if (lo, hi) != (1.0, 1.0):
        factor, crop = rng.uniform(lo, hi), args.crop and _croppable(record)
        scaled, scaled_image = _scale(_copy_record(record), image, factor, crop, rng)
        if _targets_kept(scaled):  # a target shrunk to nothing: keep this picture unscaled
            record, image = scaled, scaled_image
    if args.color > 0:
        image = _color(image, args.color, rng)
    return record, image


def _copy_record(record: dict) -> dict:
    out = dict(record)
    out["rounds"] = [dict(rnd, targets=[dict(t) for t in rnd.get("targets", [])]) for rnd in record["rounds"]]
    return out


def _targets_kept(record: dict) -> bool:
    return all(t["bbox"][2] > 0 and t["bbox"][3] > 0 for rnd in record["rounds"] for t in rnd["targets"])


def _croppable(record: dict) -> bool:
    return not any(rnd.get("type") in NO_CROP_TYPES for rnd in record["rounds"])


def _map_masks(record: dict, fn) -> dict:
    """Apply ``fn`` (bool [H, W] -> bool [H', W']) to every target mask and ignore mask."""
    for rnd in record["rounds"]:
        for target in rnd["targets"]:
            mask = fn(decode_rle(target["rle"]).astype(bool))
            target["rle"] = encode_rle(mask)
            target["bbox"] = [round(v, 2) for v in mask_to_bbox(mask)]
            if "ignore_rle" in target:
                target["ignore_rle"] = encode_rle(fn(decode_rle(target["ignore_rle"]).astype(bool)))
    return record


def _flip(record: dict, image: np.ndarray) -> tuple[dict, np.ndarray]:
    width = image.shape[1]
    _map_masks(record, lambda m: m[:, ::-1])
    for rnd in record["rounds"]:
        rnd["question"], rnd["answer"] = swap_sides(rnd["question"]), swap_sides(rnd["answer"])
        for target in rnd["targets"]:
            if "ann_bbox" in target:
                x, y, w, h = target["ann_bbox"]
                target["ann_bbox"] = [round(width - x - w, 2), y, w, h]
            if "label" in target:
                target["label"] = swap_sides(target["label"])
    return record, np.ascontiguousarray(image[:, ::-1])


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    from PIL import Image

    resample = Image.NEAREST if nearest else Image.BILINEAR
    if array.dtype == bool:
        return np.asarray(Image.fromarray(array.astype(np.uint8) * 255).resize(size[::-1], resample)) > 127
    return np.asarray(Image.fromarray(array).resize(size[::-1], resample))


def _scale(record: dict, image: np.ndarray, factor: float, crop: bool, rng: random.Random) -> tuple[dict, np.ndarray]:
    h, w = image.shape[:2]
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    if factor < 1:  # zoom out: paste on a canvas of the original size
        top, left = rng.randint(0, h - nh), rng.randint(0, w - nw)

        def place(a: np.ndarray, fill) -> np.ndarray:
            canvas = np.full((h, w, *a.shape[2:]), fill, dtype=a.dtype)
            canvas[top:top + nh, left:left + nw] = _resize(a, (nh, nw), nearest=a.dtype == bool)
            return canvas
        out_image = place(image, image.reshape(-1, image.shape[-1]).mean(0).astype(image.dtype))
        _map_masks(record, lambda m: place(m, False))
        _shift_ann_boxes(record, factor, left, top)
        return record, out_image
    window = (rng.randint(0, nh - h), rng.randint(0, nw - w)) if crop else None
    if window is not None and not _crop_keeps_targets(record, (nh, nw), window, (h, w)):
        window = None

    def fit(a: np.ndarray) -> np.ndarray:
        big = _resize(a, (nh, nw), nearest=a.dtype == bool)
        return big if window is None else big[window[0]:window[0] + h, window[1]:window[1] + w]
    out_image = fit(image)
    _map_masks(record, fit)
    _shift_ann_boxes(record, factor, -(window[1] if window else 0), -(window[0] if window else 0),
                     clip=out_image.shape[:2])
    record["height"], record["width"] = int(out_image.shape[0]), int(out_image.shape[1])
    return record, out_image


def _crop_keeps_targets(record: dict, size: tuple[int, int], window: tuple[int, int], out: tuple[int, int]) -> bool:
    """Whether every target keeps some pixels in the crop window (else the crop is not made)."""
    for rnd in record["rounds"]:
        for target in rnd["targets"]:
            big = _resize(decode_rle(target["rle"]).astype(bool), size, nearest=True)
            if not big[window[0]:window[0] + out[0], window[1]:window[1] + out[1]].any():
                return False
    return True


def _shift_ann_boxes(record: dict, factor: float, dx: float, dy: float, clip=None) -> None:
    """Scale and move each ``ann_bbox`` with the pixels (clipped to the picture after a crop)."""
    for rnd in record["rounds"]:
        for target in rnd["targets"]:
            if "ann_bbox" not in target:
                continue
            x, y, w, h = (v * factor for v in target["ann_bbox"])
            x0, y0, x1, y1 = x + dx, y + dy, x + dx + w, y + dy + h
            if clip is not None:
                x0, x1 = max(0.0, x0), min(float(clip[1]), x1)
                y0, y1 = max(0.0, y0), min(float(clip[0]), y1)
            target["ann_bbox"] = [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]


def _color(image: np.ndarray, strength: float, rng: random.Random) -> np.ndarray:
    """Brightness, contrast and saturation, each by a factor in [1 - strength, 1 + strength]."""
    out = image.astype(np.float32)
    out *= rng.uniform(1 - strength, 1 + strength)  # brightness
    out = (out - out.mean()) * rng.uniform(1 - strength, 1 + strength) + out.mean()  # contrast
    gray = out.mean(axis=-1, keepdims=True)
    out = (out - gray) * rng.uniform(1 - strength, 1 + strength) + gray  # saturation
    return np.clip(out, 0, 255).astype(np.uint8)
