"""Pascal-Panoptic-Parts: objects and parts from the hierarchical label maps.

Input: the label folder (``labels/training/2008_000002.tif`` ...: one 32-bit image per picture
whose pixels hold a universal id: ``sid`` (1-2 digits, semantic only), ``sid*1000 + iid``
(4-5 digits, an instance) or ``sid*100000 + iid*100 + pid`` (6-7 digits, a part of an instance;
``pid`` 0 is an unlabelled part), 0 being unlabelled), the toolkit's data-set spec and,
optionally, a part grouping. Images are VOC 2010 JPEGs with the same stem.

The specs are those of the ``panoptic_parts`` toolkit, read as it reads them:

- **Data-set spec** (``ppp_datasetspec.yaml``, version 2.0): ``scene_class2part_classes`` is an
  ordered mapping whose order *is* the id: the k-th scene class has ``sid`` k (1-based, 0 is
  unlabelled) and the k-th part name of a class has ``pid`` k. The label maps store some parts
  with one pid per part instance (up to ten aeroplane engines: pids 6-15);
  ``countable_pids_groupings`` folds those file pids onto the part's own pid before naming.
  Part names are PASCAL-Part's abbreviations (``lfuleg``); records use words
  ("left front upper leg", :data:`PART_WORDS`).
- **Part grouping** (optional), either the toolkit's named ``part_groupings`` (scene class ->
  new part -> the spec's part names, as ``ppq_ppp_20_58_part_groupings.yaml``) or
  ``sid2pids_groups`` (sid -> lists of file pids, as ``ppp_100_72.yaml``: person pids 1-10 and
  12 form one part, the head). ``sid2pids_groups`` carries no names: a group is named by what
  its members share (:func:`group_name`).
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

PART_WORDS = {
    "lwing": "left wing", "rwing": "right wing", "fwheel": "front wheel", "bwheel": "back wheel",
    "leye": "left eye", "reye": "right eye", "lear": "left ear", "rear": "right ear",
    "lebrow": "left eyebrow", "rebrow": "right eyebrow", "lhorn": "left horn", "rhorn": "right horn",
    "lleg": "left leg", "rleg": "right leg", "lfoot": "left foot", "rfoot": "right foot",
    "lhand": "left hand", "rhand": "right hand",
    "llarm": "left lower arm", "luarm": "left upper arm", "rlarm": "right lower arm", "ruarm": "right upper arm",
    "llleg": "left lower leg", "luleg": "left upper leg", "rlleg": "right lower leg", "ruleg": "right upper leg",
    "lfleg": "left front leg", "rfleg": "right front leg", "lbleg": "left back leg", "rbleg": "right back leg",
    "lfpa": "left front paw", "rfpa": "right front paw", "lbpa": "left back paw", "rbpa": "right back paw",
    "lfho": "left front hoof", "rfho": "right front hoof", "lbho": "left back hoof", "rbho": "right back hoof",
    "lfuleg": "left front upper leg", "lflleg": "left front lower leg",
    "rfuleg": "right front upper leg", "rflleg": "right front lower leg",
    "lbuleg": "left back upper leg", "lblleg": "left back lower leg",
    "rbuleg": "right back upper leg", "rblleg": "right back lower leg",
    "frontside": "front side", "leftside": "left side", "rightside": "right side", "backside": "back side",
    "roofside": "roof", "leftmirror": "left mirror", "rightmirror": "right mirror",
    "fliplate": "front license plate", "bliplate": "back license plate",
    "hfrontside": "head front side", "hleftside": "head left side", "hrightside": "head right side",
    "hbackside": "head back side", "hroofside": "head roof",
    "cfrontside": "coach front side", "cleftside": "coach left side", "crightside": "coach right side",
    "cbackside": "coach back side", "croofside": "coach roof",
}
"""PASCAL-Part's part abbreviations as words; a name not listed is already a word."""

QUALIFIERS = ("left", "right", "front", "back", "upper", "lower", "head", "coach")
"""Words that place a part without changing what it is (used to name unnamed groups)."""
BODY_PARTS = frozenset({"side", "roof", "mirror", "door", "license plate"})
"""A vehicle's surfaces: a group of several of them is its body."""

UNLABELED = "UNLABELED"


class PartSpec:
    """Names and pid folding of one data set: ``sid -> name``, ``(sid, file pid) -> part name``.

    Build it with :func:`load_spec`; ``part_name(sid, pid)`` is ``None`` for an id the spec
    does not know.
    """

    def __init__(self, sid2name: dict[int, str], sid_pid2part: dict[tuple[int, int], str]):
        self.sid2name = sid2name
        self.sid_pid2part = sid_pid2part

    def part_name(self, sid: int, pid: int) -> str | None:
        return self.sid_pid2part.get((sid, pid))


def part_words(name: str) -> str:
    """``lfuleg`` -> ``left front upper leg``; other names through :func:`clean_name`."""
    return PART_WORDS.get(name, clean_name(name))


def group_name(members: list[str]) -> str:
    """A name for an unnamed group of parts (words): the one name its members share once
    sides are dropped ("left wing", "right wing" -> "wing"), or once all placing words are
    ("left front upper leg", "right back lower leg" -> "leg"); "body" for a vehicle's sides,
    roof, mirrors and doors; two names joined ("lower arm and hand", sides dropped); or, for a
    larger mix, its first member's base ("head" for a person's head, eyes, ears, nose...)."""
    def strip(name: str, words: tuple[str, ...]) -> str:
        kept = [w for w in name.split() if w not in words]
        return " ".join(kept) or name

    sided = list(dict.fromkeys(strip(m, ("left", "right")) for m in members))
    bases = list(dict.fromkeys(strip(m, QUALIFIERS) for m in members))
    if len(sided) == 1 or len(bases) == 1:
        return sided[0] if len(sided) == 1 else bases[0]
    if set(bases) <= BODY_PARTS:
        return "body"
    if len(sided) == 2:
        return " and ".join(sided)
    return bases[0]


def _read_yaml(path: str) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as exc:
        raise SourceError(f"{path}: unreadable spec ({exc})") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path}: a spec must be a YAML mapping")
    return data


def _dataset_parts(path: str, spec: dict) -> tuple[dict[int, str], dict[int, list[str]], dict[tuple[int, int], int]]:
    """sid -> class, sid -> raw part names (index = pid), (sid, file pid) -> pid."""
    classes = spec["scene_class2part_classes"]
    if not isinstance(classes, dict):
        raise SourceError(f"{path}: 'scene_class2part_classes' must be an ordered mapping")
    names = [str(k) for k in classes]
    if names[:1] != [UNLABELED]:
        names = [UNLABELED, *names]
    sid2name, sid2parts = {}, {}
    for sid, name in enumerate(names):
        if sid == 0:
            continue
        parts = [str(p) for p in (classes.get(name) or [])]
        sid2name[sid] = clean_name(name)
        sid2parts[sid] = parts if parts[:1] == [UNLABELED] else [UNLABELED, *parts]
    folding = {}
    for scene, groups in (spec.get("countable_pids_groupings") or {}).items():
        if str(scene) not in names:
            raise SourceError(f"{path}: countable_pids_groupings names unknown class {scene!r}")
        sid = names.index(str(scene))
        for part, file_pids in groups.items():
            if str(part) not in sid2parts[sid]:
                raise SourceError(f"{path}: countable_pids_groupings: {scene!r} has no part {part!r}")
            for file_pid in file_pids:
                folding[(sid, int(file_pid))] = sid2parts[sid].index(str(part))
    return sid2name, sid2parts, folding


def load_spec(spec_file: str, grouping_file: str | None = None) -> PartSpec:
    """The toolkit's data-set spec, optionally with a part grouping (see the module doc)."""
    spec = _read_yaml(spec_file)
    if "scene_class2part_classes" not in spec:
        hint = (" (it looks like ppp_100_72.yaml, which has no part names: pass it as the "
                "grouping, after ppp_datasetspec.yaml)" if "sid2pids_groups" in spec else "")
        raise SourceError(f"{spec_file}: a data-set spec needs 'scene_class2part_classes'{hint}")
    sid2name, sid2parts, folding = _dataset_parts(spec_file, spec)

    def file_pid_to_pid(sid: int, file_pid: int) -> int:
        return folding.get((sid, file_pid), file_pid)

    sid_pid2part: dict[tuple[int, int], str] = {}
    for sid, parts in sid2parts.items():
        for pid in range(1, len(parts)):
            sid_pid2part[(sid, pid)] = part_words(parts[pid])
    for (sid, file_pid), pid in folding.items():
        sid_pid2part[(sid, file_pid)] = part_words(sid2parts[sid][pid])
    if grouping_file is None:
        return PartSpec(sid2name, sid_pid2part)
    grouping = _read_yaml(grouping_file)
    if "part_groupings" in grouping:
        grouped = _named_groups(grouping_file, grouping["part_groupings"], sid2name, sid2parts, folding)
    elif "sid2pids_groups" in grouping:
        grouped = _pid_groups(grouping_file, grouping["sid2pids_groups"], sid2name, sid_pid2part)
    else:
        raise SourceError(f"{grouping_file}: a part grouping needs 'part_groupings' or 'sid2pids_groups'")
    # classes the grouping does not mention keep no parts, as in the toolkit's evaluation
    return PartSpec(sid2name, grouped)


def _named_groups(path, groupings, sid2name, sid2parts, folding) -> dict[tuple[int, int], str]:
    """``part_groupings``: scene class -> {new part: [spec part names]}; UNLABELED stays out."""
    name2sid = {name: sid for sid, name in sid2name.items()}
    out = {}
    for scene, groups in groupings.items():
        sid = name2sid.get(clean_name(str(scene)))
        if sid is None:
            raise SourceError(f"{path}: part_groupings names unknown class {scene!r}")
        for new_part, old_parts in groups.items():
            for old in old_parts:
                if str(old) == UNLABELED:
                    continue
                if str(old) not in sid2parts[sid]:
                    raise SourceError(f"{path}: part_groupings: {scene!r} has no part {old!r}")
                pid = sid2parts[sid].index(str(old))
                out[(sid, pid)] = clean_name(str(new_part))
                for (s, file_pid), folded in folding.items():
                    if s == sid and folded == pid:
                        out[(sid, file_pid)] = clean_name(str(new_part))
    return out


def _pid_groups(path, sid2pids_groups, sid2name, sid_pid2part) -> dict[tuple[int, int], str]:
    """``sid2pids_groups``: sid -> [[file pids of one part], ...], named by :func:`group_name`."""
    out = {}
    for sid, groups in sid2pids_groups.items():
        sid = int(sid)
        if sid not in sid2name:
            raise SourceError(f"{path}: sid2pids_groups names unknown sid {sid}")
        for group in groups:
            members = []
            for pid in group:
                name = sid_pid2part.get((sid, int(pid)))
                if name is None:
                    raise SourceError(f"{path}: sid2pids_groups: sid {sid} ({sid2name[sid]}) has no pid {pid}")
                members.append(name)
            name = group_name(members)
            for pid in group:
                out[(sid, int(pid))] = name
    return out


def decode_uids(uids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel (sid, iid, pid) of a universal-id map; iid and pid are -1 where absent."""
    uids = uids.astype(np.int64)
    sid = np.where(uids >= 100_000, uids // 100_000, np.where(uids >= 1000, uids // 1000, uids))
    iid = np.where(uids >= 100_000, (uids // 100) % 1000, np.where(uids >= 1000, uids % 1000, -1))
    pid = np.where(uids >= 100_000, uids % 100, -1)
    return sid, iid, pid


class PascalPartsBuilder(Builder):
    """Hierarchical conversations from Pascal-Panoptic-Parts label maps.

    Args:
        label_dir: folder searched recursively for ``*.tif`` label maps.
        spec_file: the toolkit's data-set spec (``ppp_datasetspec.yaml``).
        grouping_file: optional part grouping (``part_groupings`` or ``sid2pids_groups``).
        min_area: regions smaller than this many pixels are not used (counted).
    """

    name = "pascal-panoptic-parts"

    def __init__(self, label_dir: str, spec_file: str, grouping_file: str | None = None, *,
                 split: str = "train", min_area: int = 16, image_ext: str = ".jpg", **kwargs):
        super().__init__(**kwargs)
        self.label_files = sorted(glob.glob(os.path.join(glob.escape(label_dir), "**", "*.tif"), recursive=True))
        self.spec = load_spec(spec_file, grouping_file)
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

    def _parts(self, instance: np.ndarray, pid: np.ndarray, sid: int, key: str, stats: BuildStats,
               record_id: str) -> list[Obj]:
        """The instance's parts, file pids folded and grouped into named parts."""
        by_name: dict[str, np.ndarray] = {}
        for p in sorted(int(v) for v in np.unique(pid[instance]) if v > 0):
            name = self.spec.part_name(sid, p)
            if name is None:
                stats.skip(f"{record_id}/{key}_{p}", "unknown_part", f"pid {p} of {self.spec.sid2name[sid]}")
                continue
            by_name[name] = by_name.get(name, np.zeros_like(instance)) | (instance & (pid == p))
        parts = [self._region(mask, f"{key}_{name}", name, stats, record_id) for name, mask in by_name.items()]
        return [p for p in parts if p is not None]

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
            name = self.spec.sid2name.get(s)
            if name is None:
                stats.skip(f"{record_id}/{s}_{i}", "unknown_class", f"sid {s}")
                continue
            instance = (sid == s) & (iid == i)
            whole = self._region(instance, f"{s}_{i}", name, stats, record_id)
            if whole is not None:
                pairs.append((whole, self._parts(instance, pid, s, f"{s}_{i}", stats, record_id)))
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
