"""Shared fixtures: tiny model pieces and hand-made multi-round conversations."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

torch.set_num_threads(2)

# The CPU's inference default is bf16 where this machine runs it faster (segllm.dtypes); tests
# compare exact outputs of saved and in-memory models, so they run in the saved fp32 whatever
# the machine. Tests of the detection itself unset this, and the bf16 path is asked for by name.
os.environ.setdefault("SEGLLM_CPU_DTYPE", "fp32")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI (CI=true) a skipped test fails: a skip there means a missing install step."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, so something was not installed: {reason}"


def rle_of(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def box_mask(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def make_conversation(sample_id: str, h: int = 48, w: int = 64, seed: int = 0):
    """A 3-round conversation: referring, positional with <ref:0>, two targets with <ref:1>."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    a = box_mask(h, w, 4, 4, 20, 20)
    b = box_mask(h, w, 30, 6, 50, 30)
    c = box_mask(h, w, 10, 30, 24, 44)
    target = lambda m: {"rle": rle_of(m), "bbox": [0, 0, 1, 1]}  # noqa: E731
    record = {
        "id": sample_id, "image": f"{sample_id}.png", "height": h, "width": w,
        "source": "test", "split": "train",
        "rounds": [
            {"question": "Segment the red square.", "answer": "Sure, [SEG].",
             "targets": [target(a)], "refs": [], "type": "referring"},
            {"question": "Segment the shape right of <ref:0>.", "answer": "It is [SEG].",
             "targets": [target(b)], "refs": [0], "type": "positional"},
            {"question": "Segment <ref:1> and the shape below <ref:0>.",
             "answer": "[SEG] and [SEG].", "targets": [target(b), target(c)], "refs": [0, 1],
             "type": "interactional"},
        ],
    }
    return record, image


@pytest.fixture()
def one_torch_thread():
    """Torch on one thread for the test: tiny ops run faster on one thread than on two fighting
    over shared cores (8x for the query decoder's tests)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from segllm.tokenizer import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture()
def tiny_config():
    from segllm.config import SegLLMConfig

    return SegLLMConfig.from_name("tiny")


@pytest.fixture()
def tiny_model(tiny_config, tiny_tokenizer):
    from segllm.modeling.model import SegLLMModel

    torch.manual_seed(0)
    return SegLLMModel.from_config(tiny_config, tokenizer=tiny_tokenizer)


@pytest.fixture()
def tiny_batch(tiny_model):
    from segllm.batching import build_batch

    items = [make_conversation("conv-a", seed=1), make_conversation("conv-b", 40, 56, seed=2)]
    return build_batch(items, tiny_model.tokenizer, tiny_model.config)
