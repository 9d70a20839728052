"""Fixtures for the demo tests: a tiny pipeline whose answers always hold [SEG]."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from segllm.config import SegLLMConfig
    from segllm.demo.app import SegLLMDemo
    from segllm.modeling.model import SegLLMModel
    from segllm.pipeline import SegLLMPipeline
    from tests.pipeline.helpers import forcing

    torch.manual_seed(0)
    pipeline = SegLLMPipeline(SegLLMModel.from_config(SegLLMConfig.from_name("tiny")))
    return SegLLMDemo(pipeline, generation=forcing(pipeline, "Sure, [SEG]."),
                      max_file_bytes=200_000, max_pixels=4_000_000,
                      output_root=tmp_path_factory.mktemp("demo-out"))


@pytest.fixture()
def image_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)).save(path)
    return path
