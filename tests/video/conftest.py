"""One tiny random model for the video tests (built once: building it is most of their time)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="package")
def tiny_model():
    from segllm.config import SegLLMConfig
    from segllm.modeling.model import SegLLMModel

    torch.manual_seed(0)
    return SegLLMModel.from_config(SegLLMConfig.from_name("tiny"))


@pytest.fixture(scope="package")
def pipeline(tiny_model):
    """The tiny model in a pipeline (fp32, greedy, short answers)."""
    from segllm.pipeline import GenerationConfig, SegLLMPipeline

    return SegLLMPipeline(tiny_model, generation=GenerationConfig(max_new_tokens=10))


@pytest.fixture(scope="package")
def model_dir(tiny_model, tmp_path_factory):
    """The same model written by ``save_pretrained``, for the commands."""
    return tiny_model.save_pretrained(tmp_path_factory.mktemp("model") / "tiny")
