"""Pascal-Panoptic-Parts: objects and parts from the hierarchical label maps.

Input: the label folder (``labels/training/2008_000002.tif`` ...: one 32-bit image per picture
whose pixels hold a universal id: ``sid`` (1-2 digits, semantic only), ``sid*1000 + iid``
(4-5 digits, an instance) or ``sid*100000 + iid*100 + pid`` (6-7 digits, a part of an instance;
``pid`` 0 is an unlabelled part), 0 being unlabelled) and a data-set spec YAML with
``sid2name`` (as in the toolkit's ``ppp_100_72.yaml``) and ``scene_class2part_classes``
(part names per scene class; ``pid`` k is the k-th name). Images are VOC 2010 JPEGs with the
same stem.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator

import numpy as np

from segllm.masks import encode_rle, mask_to_bbox

from .base import Builder, BuildStats
from .coco_format import SourceError
from .compose import Planner
from .geometry import Obj
from .hierarchy import plan_hierarchy
from .rounds import clean_name


def decode_uids(uids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel (sid, iid, pid) of a universal-id map; iid and pid are -1 where absent."""
    uids = uids.astype(np.int64)
    sid = np.where(uids >= 100_000, uids // 100_000, np.where(uids >= 1000, uids // 1000, uids))
    iid = np.where(uids >= 100_000, (uids // 100) % 1000, np.where(uids >= 1000, uids % 1000, -1))
    pid = np.where(uids >= 100_000, uids % 100, -1)
    return sid, iid, pid


def load_spec(path: str) -> tuple[dict[int, str], dict[str, list[str]]]:
    """``sid -> name`` and ``scene name -> part names`` from a spec YAML."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            spec = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as exc:
        raise SourceError(f"{path}: unreadable spec ({exc})") from None
    if not isinstance(spec, dict) or "sid2name" not in spec:
        raise SourceError(f"{path}: spec needs 'sid2name'")
    sid2name = {int(k): clean_name(str(v)) for k, v in spec["sid2name"].items() if int(k) > 0}
    parts = {clean_name(str(k)): [clean_name(str(p)) for p in (v or [])]
             for k, v in (spec.get("scene_class2part_classes") or {}).items()}
    return sid2name, parts


class PascalPartsBuilder(Builder):
    """Hierarchical conversations from Pascal-Panoptic-Parts label maps.

    Args:
        label_dir: folder searched recursively for ``*.tif`` label maps.
        spec_file: the spec YAML (see the module doc).
        min_area: regions smaller than this many pixels are not used (counted).
    """

    name = "pascal-panoptic-parts"

    def __init__(self, label_dir: str, spec_file: str, *, split: str = "train", min_area: int = 16,
                 image_ext: str = ".jpg", **kwargs):
        super().__init__(**kwargs)
        self.label_files = sorted(glob.glob(os.path.join(glob.escape(label_dir), "**", "*.tif"), recursive=True))
        self.sid2name, self.part_names = load_spec(spec_file)
        self.split, self.min_area, self.image_ext = split, min_area, image_ext

    def total(self) -> int:
        return len(self.label_files)

    def iter_records(self, stats: BuildStats) -> Iterator[dict]:
        for path in self.label_files:
            record = self._conversation(path, stats)
            if record is not None:
                yield record

    def _region(self, mask: np.ndarray, key, name: str, stats: BuildStats, record_id: str) -> Obj | None:
        area = int(mask.sum())
        if area < self.min_area:
            stats.skip(f"{record_id}/{key}", "region_too_small", f"{area} px")
            return None
        return Obj(key=key, name=name, bbox=mask_to_bbox(mask), area=float(area), extra={"rle": encode_rle(mask)})

    def _conversation(self, path: str, stats: BuildStats) -> dict | None:
        from PIL import Image, UnidentifiedImageError

        stem = os.path.splitext(os.path.basename(path))[0]
        record_id = f"{self.name}-{self.split}-{stem}"
        file_name = stem + self.image_ext
        if self.image_missing(file_name):
            stats.skip(record_id, "missing_image", file_name)
            return None
        try:
            uids = np.asarray(Image.open(path))
        except (OSError, UnidentifiedImageError) as exc:
            stats.skip(record_id, "unreadable_label_map", str(exc))
            return None
        sid, iid, pid = decode_uids(uids)
        pairs = []
        for s, i in sorted({(int(a), int(b)) for a, b in zip(sid[iid >= 0], iid[iid >= 0], strict=True)}):
            name = self.sid2name.get(s)
            if name is None:
                stats.skip(f"{record_id}/{s}_{i}", "unknown_class", f"sid {s}")
                continue
            instance = (sid == s) & (iid == i)
            whole = self._region(instance, f"{s}_{i}", name, stats, record_id)
            if whole is None:
                continue
            parts = []
            names = self.part_names.get(name, [])
            for p in sorted(int(v) for v in np.unique(pid[instance]) if v > 0):
                if p > len(names):
                    stats.skip(f"{record_id}/{s}_{i}_{p}", "unknown_part", f"pid {p} of {name}")
                    continue
                part = self._region(instance & (pid == p), f"{s}_{i}_{p}", names[p - 1], stats, record_id)
                if part is not None:
                    parts.append(part)
            pairs.append((whole, parts))
        if not any(p for _, p in pairs):
            stats.skip(record_id, "no_object_with_parts")
            return None
        planner = Planner(self.rng(stem), self.rounds)
        plan_hierarchy(planner, pairs)
        if not planner.rounds:
            stats.skip(record_id, "no_round")
            return None
        height, width = uids.shape[:2]
        return {"id": record_id, "image": self.image_path(file_name), "height": int(height), "width": int(width),
                "source": self.name, "split": self.split, "rounds": planner.rounds}
