"""One copy of each utility: the atomic writer, the dtype table, RLE and the box of a mask."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from segllm.files import atomic_write, write_text_atomic


def test_atomic_write_replaces_whole_or_leaves_the_old_file(tmp_path):
    path = tmp_path / "new" / "a.txt"
    write_text_atomic(path, "one\n")
    assert path.read_text() == "one\n"
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "one\n" and os.listdir(path.parent) == ["a.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would make it
    with atomic_write(tmp_path / "b.bin", "wb", permissions=0o600) as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o600


def test_one_dtype_table_for_flags_exports_and_deepspeed():
    from typing import get_args, get_type_hints

    from segllm.dtypes import parse_dtype
    from segllm.pipeline import parse_dtype as pipeline_parse_dtype
    from segllm.train.args import CheckpointArgs
    from segllm.train.backend import training_dtype

    assert pipeline_parse_dtype is parse_dtype
    assert training_dtype({"bf16": {"enabled": True}}) is torch.bfloat16
    assert training_dtype({"fp16": {"enabled": True}}) is torch.float16
    assert training_dtype({"bf16": {"enabled": False}}) is torch.float32
    export_names = get_args(get_type_hints(CheckpointArgs)["export_dtype"])  # what export takes
    assert [parse_dtype(n) for n in export_names] == [torch.float32, torch.bfloat16, torch.float16]


def test_one_rle_implementation_with_located_errors():
    from segllm import batching, masks
    from segllm.eval import rle

    assert rle.to_pycoco is masks.to_pycoco and rle.decode is masks.decode
    assert batching.decode_rle is masks.decode_checked
    mask = np.zeros((4, 5), dtype=bool)
    mask[1:3, 2:4] = True
    encoded = masks.encode_rle(mask)
    assert np.array_equal(masks.decode_checked(encoded, (4, 5), "here"), mask)
    with pytest.raises(ValueError, match=r"sample 'x' round 1 target 0: mask of size \(4, 5\) "
                                         r"but the image is \(5, 4\)"):
        masks.decode_checked(encoded, (5, 4), "sample 'x' round 1 target 0")


def test_the_box_of_a_mask_agrees_in_numpy_and_torch():
    from segllm.masks import mask_to_bbox
    from segllm.processing import mask_box

    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = rng.random((int(rng.integers(1, 30)), int(rng.integers(1, 30)))) > 0.9
        if not mask.any():
            continue
        x, y, w, h = (int(v) for v in mask_to_bbox(mask))
        assert mask_box(torch.from_numpy(mask)) == (x, y, x + w, y + h)
    with pytest.raises(ValueError, match="empty mask"):
        mask_box(torch.zeros((3, 3), dtype=torch.bool))
