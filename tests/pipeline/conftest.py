"""Fixtures for the pipeline tests: one tiny pipeline per test module, saved once where a path is needed."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def pipeline():
    """A tiny random model in a pipeline (fp32, greedy, short answers)."""
    from segllm.config import SegLLMConfig
    from segllm.modeling.model import SegLLMModel
    from segllm.pipeline import GenerationConfig, SegLLMPipeline

    torch.manual_seed(0)
    model = SegLLMModel.from_config(SegLLMConfig.from_name("tiny"))
    return SegLLMPipeline(model, generation=GenerationConfig(max_new_tokens=10))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny model written by ``save_pretrained`` (same weights as ``pipeline``)."""
    from segllm.config import SegLLMConfig
    from segllm.modeling.model import SegLLMModel

    torch.manual_seed(0)
    model = SegLLMModel.from_config(SegLLMConfig.from_name("tiny"))
    return model.save_pretrained(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture()
def image():
    return np.random.default_rng(0).integers(0, 255, size=(48, 64, 3), dtype=np.uint8)

