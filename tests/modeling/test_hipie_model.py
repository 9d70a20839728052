"""The whole SegLLM model with ``decoder: hipie``: the objective reaches the decoder's set loss,
gradients reach exactly the trainable parameters, and ``segllm train`` runs a few steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segllm.batching import build_batch
from segllm.config import SegLLMConfig
from segllm.modeling.model import SegLLMModel
from segllm.pipeline import SegLLMPipeline
from segllm.train.cli import main as train_main
from segllm.train.objective import compute_objective
from segllm.train.tracking import read_metrics
from tests.conftest import make_conversation
from tests.pipeline.helpers import forcing
from tests.train.conftest import TINY_RECIPE, synthetic_dir, tiny_overrides  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def hipie_model(tiny_tokenizer):
    torch.manual_seed(0)
    config = SegLLMConfig.from_name("hipie-tiny", **{"trainable.decoder.mask_decoder": True})
    return SegLLMModel.from_config(config, tokenizer=tiny_tokenizer)


def test_three_round_batch_with_references_trains_through_the_set_loss(hipie_model):
    model = hipie_model
    items = [make_conversation("conv-a", seed=1), make_conversation("conv-b", 40, 56, seed=2)]
    batch = build_batch(items, model.tokenizer, model.config)
    assert any(r.any() for r in batch.seg_ref_masks)  # rounds 1 and 2 reference earlier ones
    out = compute_objective(model, batch)
    assert torch.isfinite(out.loss)
    assert torch.allclose(out.loss, model.config.loss.ce_weight * out.ce_loss + out.mask_loss)
    assert set(out.mask_parts) == {"class", "box_l1", "giou", "mask_bce", "dice", "box_iou"}
    assert out.num_masks == 8
    assert [tuple(m.shape) for m in out.mask_logits] == [(4, 48, 64), (4, 40, 56)]
    assert [len(r) for r in out.masks_by_round(1, 3)] == [1, 1, 2]
    out.loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("decoder.predictor.") for n in trained)
    assert not any(n.startswith(("decoder.backbone.", "decoder.pixel_decoder."))
                   for n in trained)  # frozen by default, as SegLLM keeps HIPIE
    params = dict(model.named_parameters())
    for name in ("seg_head.mlp.0.weight", "decoder.predictor.prompt_proj.0.weight",
                 "decoder.predictor.class_embed.proj.weight"):
        assert params[name].grad.abs().sum() > 0, name


def test_a_batch_without_seg_still_touches_the_decoder(hipie_model):
    model = hipie_model
    record, image = make_conversation("none")
    record["rounds"] = [{"question": "Is there a cat?", "answer": "No.", "targets": [],
                         "refs": [], "type": "referring"}]
    out = compute_objective(model, build_batch([(record, image)], model.tokenizer,
                                               model.config))
    assert out.num_masks == 0
    out.loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name


def test_chat_session_and_save_load(hipie_model, tmp_path):
    model = hipie_model.eval()
    image = np.random.default_rng(0).integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
    session = SegLLMPipeline(model).start(image)
    first = session.ask("Segment the red square.", generation=forcing(session.pipeline,
                                                                      "Sure, [SEG]."))
    second = session.ask("And left of <ref:0>?", generation=forcing(session.pipeline, "[SEG]."))
    assert first.masks[0].shape == second.masks[0].shape == (48, 64)
    loaded = SegLLMModel.from_pretrained(model.save_pretrained(tmp_path / "m")).eval()
    assert loaded.config.decoder == "hipie"
    for name, value in model.decoder.state_dict().items():
        assert torch.equal(value, loaded.decoder.state_dict()[name]), name


def test_segllm_train_runs_with_the_hipie_decoder(synthetic_dir, tmp_path):  # noqa: F811
    steps = 3
    overrides = tiny_overrides(synthetic_dir, tmp_path, max_steps=steps,
                               **{"model.preset": "hipie-tiny", "checkpoint.every": 0,
                                  "validation.every": 0})
    assert train_main(["--config", str(TINY_RECIPE), *overrides]) == 0
    metrics = [m for m in read_metrics(tmp_path / "metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in metrics] == list(range(1, steps + 1))
    assert all(math.isfinite(m["loss"]) and m["grad_norm"] > 0 for m in metrics)
