"""Issue 16 in the data builders: no code from refs pickles (item 3), a stopped synthetic
rebuild leaves the old data set whole (item 6), no silent empty output (item 7), duplicate
COCO image ids and masks that do not cover their image (item 2) are errors."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segllm import cli
from segllm.data_builders.base import BuildError
from segllm.data_builders.coco_format import SourceError
from segllm.data_builders.coco_instances import CocoInstancesBuilder
from segllm.data_builders.leakage import load_refs
from segllm.data_builders.synthetic import write_synthetic
from segllm.records import read_jsonl

FIX = Path(__file__).resolve().parents[1] / "fixtures"
ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ item 3: refs pickles


class _RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_refs_pickle_runs_nothing_and_is_refused(tmp_path):
    marker = tmp_path / "ran"
    crafted = tmp_path / "refs(unc).p"
    crafted.write_bytes(pickle.dumps([{"image_id": 1, "split": "val"}, _RunsACommand(marker)], protocol=2))
    with pytest.raises(SourceError, match=r"refs\(unc\).p: not a refer refs pickle.*posix.system.*refuses"):
        load_refs(crafted)
    assert not marker.exists()


def test_the_published_refs_still_load(tmp_path):
    refs = load_refs(FIX / "refcoco" / "refs(unc).p")  # a Python 2 pickle of dicts and lists
    assert refs and all(isinstance(r, dict) for r in refs)
    not_a_list = tmp_path / "refs.p"
    not_a_list.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(SourceError, match="expected a list of refs, got dict"):
        load_refs(not_a_list)


def test_a_crafted_exclude_refs_file_is_exit_2_through_the_cli(tmp_path, capsys):
    marker = tmp_path / "ran"
    crafted = tmp_path / "evil.p"
    crafted.write_bytes(pickle.dumps(_RunsACommand(marker)))
    code = cli.main(["build-data", "coco", "--input", str(FIX / "coco" / "instances_train2017.json"),
                     "--output", str(tmp_path / "out"), "--exclude-refs", str(crafted),
                     "--coco-val2017", str(FIX / "coco" / "instances_val2017.json"), "--no-progress"])
    assert code == 2 and not marker.exists()
    assert "evil.p: not a refer refs pickle" in capsys.readouterr().err


# ------------------------------------------------------------------ item 6: synthetic rebuilds


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_killed_rebuild_leaves_the_old_data_set_whole(tmp_path):
    """Before: images were overwritten in place while the old JSONL stayed, so a rebuild with
    another seed killed mid-way left a mix (and a 0-byte PNG) under a "valid" JSONL."""
    out = tmp_path / "shapes"
    write_synthetic(out, num=20, seed=0, max_rounds=2)
    before = _snapshot(out)
    cmd = [sys.executable, "-m", "segllm.cli", "build-data", "synthetic", "--output", str(out),
           "--num", "100000", "--seed", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    try:
        while not any(p.is_dir() and any(p.glob("images/*.png")) for p in tmp_path.glob(".shapes.*.tmp")):
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "the rebuild wrote no image within 2 minutes"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]  # temporary folder removed


def test_a_sigkilled_rebuilds_leftover_is_removed_by_the_next_build(tmp_path):
    out = tmp_path / "shapes"
    stale = tmp_path / ".shapes.999999999.abc.tmp"  # no such process
    (stale / "images").mkdir(parents=True)
    write_synthetic(out, num=3, seed=0, max_rounds=2)
    assert not stale.exists() and len(list(read_jsonl(out / "synthetic.jsonl"))) == 3


def test_a_rebuild_replaces_every_file_and_refuses_foreign_ones(tmp_path):
    out = tmp_path / "shapes"
    write_synthetic(out, num=6, seed=0, max_rounds=2)
    write_synthetic(out, num=3, seed=1, max_rounds=2, gcg=False)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert not (out / "synthetic_gcg.jsonl").exists()  # it described the old images
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BuildError, match="holds notes.txt, which a synthetic build does not write"):
        write_synthetic(out, num=3, seed=2)
    assert (out / "notes.txt").read_text() == "mine"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------ item 7: no silent empty output


def test_synthetic_num_0_is_an_error_unless_asked_for(tmp_path, capsys):
    out = tmp_path / "shapes"
    write_synthetic(out, num=4, seed=0, max_rounds=2)
    before = _snapshot(out)
    assert cli.main(["build-data", "synthetic", "--output", str(out), "--num", "0", "--no-progress"]) == 2
    assert "no records to write" in capsys.readouterr().err
    assert _snapshot(out) == before
    assert cli.main(["build-data", "synthetic", "--output", str(out), "--num", "0", "--no-progress",
                     "--allow-empty"]) == 0
    assert (out / "synthetic.jsonl").read_text() == ""


def _coco(tmp_path: Path, images: list[dict], annotations: list[dict]) -> Path:
    source = json.loads((FIX / "coco" / "instances_train2017.json").read_text())
    source["images"], source["annotations"] = images, annotations
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(source))
    return path


def _coco_cli(path: Path, out: Path, *extra: str) -> int:
    return cli.main(["build-data", "coco", "--input", str(path), "--output", str(out), "--split", "val",
                     "--no-progress", *extra])


def test_an_empty_coco_file_does_not_replace_a_good_output(tmp_path, capsys):
    out = tmp_path / "out"
    assert _coco_cli(FIX / "coco" / "instances_train2017.json", out) == 0
    good = (out / "coco.jsonl").read_bytes()
    assert good and capsys.readouterr()
    assert _coco_cli(_coco(tmp_path, [], []), out) == 2
    assert "coco: no records to write" in capsys.readouterr().err
    assert (out / "coco.jsonl").read_bytes() == good


# ------------------------------------------------------------------ also: duplicate ids, bad masks


def test_duplicate_coco_image_ids_are_an_error(tmp_path, capsys):
    source = json.loads((FIX / "coco" / "instances_train2017.json").read_text())
    twin = dict(source["images"][0], file_name="another.jpg")
    path = _coco(tmp_path, [*source["images"], twin], source["annotations"])
    with pytest.raises(BuildError, match=f"coco source images: id {twin['id']} appears more than once"):
        CocoInstancesBuilder(str(path), split="val").build(tmp_path / "coco.jsonl")
    assert not (tmp_path / "coco.jsonl").exists()
    assert _coco_cli(path, tmp_path / "out") == 2
    assert "appears more than once" in capsys.readouterr().err


def test_a_coco_mask_whose_counts_miss_pixels_is_skipped_not_written(tmp_path):
    """Item 2: such a mask decoded to different pixels on each call (uninitialised memory)."""
    source = json.loads((FIX / "coco" / "instances_train2017.json").read_text())
    image = source["images"][0]
    anns = [a for a in source["annotations"] if a["image_id"] == image["id"]]
    anns[0] = dict(anns[0], segmentation={"size": [image["height"], image["width"]], "counts": "Ue01o1"})
    builder = CocoInstancesBuilder(str(_coco(tmp_path, [image], anns)), split="val")
    stats = builder.build(tmp_path / "coco.jsonl", allow_empty=True)
    assert stats.skipped["bad_segmentation"] == 1
    assert any("sum to 741" in example for example in stats.skip_examples)
