"""The image tokens' word loss (train/vision_aux.py): targets, the loss, and a run that uses it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from segllm.batching import collate, encode_sample
from segllm.masks import encode_rle
from segllm.train.args import SourceArgs, TrainConfigError, load_train_config
from segllm.train.augment import AugmentArgs
from segllm.train.data import ConversationSource
from segllm.train.objective import compute_objective
from segllm.train.vision_aux import VisionAuxArgs, VisionAuxLoss, phrase_words

from .conftest import TINY_RECIPE, tiny_overrides


def test_phrase_words_keep_the_content_words():
    assert phrase_words("A blue square with a hole") == ["blue", "square", "hole"]
    assert phrase_words("an Orange circle") == ["orange", "circle"]


def _square(size: int, top: int, left: int, side: int) -> dict:
    mask = np.zeros((size, size), bool)
    mask[top:top + side, left:left + side] = True
    return encode_rle(mask)


def _loss_for(scenes, tokenizer, grid=2) -> VisionAuxLoss:
    return VisionAuxLoss(scenes, {"s": Path("img.png")}, tokenizer, grid, VisionAuxArgs(
        labels="x", weight=1.0))


def test_patch_targets_are_the_pixel_shares_of_each_word(tiny_tokenizer):
    # a red circle fills the top-left quadrant of a 16 px image; a 4 px green square sits
    # inside it (a part keeps its own pixels); the rest is background
    scenes = {Path("img.png"): [(["red", "circle"], _square(16, 0, 0, 8)),
                                (["green", "square"], _square(16, 0, 0, 4))]}
    aux = _loss_for(scenes, tiny_tokenizer)
    targets = aux.patch_targets("s")
    col = {w: i for i, w in enumerate(aux.words)}
    assert targets.shape == (4, len(aux.words))
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(4))
    top_left = targets[0]
    assert top_left[col["green"]] == pytest.approx(0.25 / 2)  # 16 of 64 pixels, two words
    assert top_left[col["red"]] == pytest.approx(0.75 / 2)
    assert top_left[col["background"]] == 0
    for patch in (1, 2, 3):
        assert targets[patch][col["background"]] == 1
    assert aux.patch_targets("unknown sample") is None


def test_a_wide_image_is_padded_to_a_square_like_the_clip_input(tiny_tokenizer):
    mask = np.zeros((8, 16), bool)
    mask[:, :8] = True  # the left half of a 16 x 8 image
    scenes = {Path("img.png"): [(["red"], encode_rle(mask))]}
    targets = _loss_for(scenes, tiny_tokenizer).patch_targets("s")
    # centred on a 16 x 16 canvas: rows 4-11; each top patch holds 4 of its 8 rows
    red = _loss_for(scenes, tiny_tokenizer).words.index("red")
    assert targets[0, red] == pytest.approx(0.5) and targets[1, red] == 0


@pytest.fixture(scope="module")
def labelled_dir(tmp_path_factory):
    from segllm.data_builders.synthetic import write_synthetic

    out = tmp_path_factory.mktemp("aux")
    write_synthetic(out, num=4, seed=5, image_size=48, max_rounds=2)
    return out


def test_the_loss_falls_when_tokens_sit_at_their_words_and_reaches_the_projector(
        labelled_dir, tiny_model):
    source = ConversationSource.from_args(SourceArgs(path=str(labelled_dir / "synthetic.jsonl")))
    args = VisionAuxArgs(labels=str(labelled_dir / "synthetic_gcg.jsonl"), weight=1.0)
    grid_tokens = tiny_model.config.vision.num_image_tokens
    aux = VisionAuxLoss.build(args, [source], tiny_model.tokenizer, grid_tokens)
    batch = collate([encode_sample(*source.load(i), tiny_model.tokenizer, tiny_model.config)
                     for i in range(2)], tiny_model.config.token_ids["pad"])
    out = compute_objective(tiny_model, batch, vision_aux=aux)
    assert out.aux_loss is not None and torch.isfinite(out.aux_loss)
    out.loss.backward()
    # the tiny preset freezes the vision tower (LLaVA's design); its projector trains
    projector = tiny_model.llava.model.multi_modal_projector
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())

    # image tokens replaced by the embeddings their targets ask for score better
    embeds = tiny_model.embed_inputs(batch.input_ids, batch.pixel_values).detach()
    table = tiny_model.language_model.embed_tokens.weight.detach()[aux.vocab]
    ideal = embeds.clone()
    slots = batch.input_ids == tiny_model.config.token_ids["image"]
    for i, sample in enumerate(batch.sample_ids):
        ideal[i][slots[i]] = (aux.patch_targets(sample) @ aux.word_to_vocab) @ table
    with torch.no_grad():
        assert aux(tiny_model, batch, ideal) < aux(tiny_model, batch, embeds)


def test_sources_that_flip_or_rescale_are_refused(labelled_dir, tiny_model):
    source = ConversationSource.from_args(SourceArgs(
        path=str(labelled_dir / "synthetic.jsonl"), augment=AugmentArgs(hflip=0.5)))
    args = VisionAuxArgs(labels=str(labelled_dir / "synthetic_gcg.jsonl"), weight=1.0)
    with pytest.raises(ValueError, match="flips or rescales"):
        VisionAuxLoss.build(args, [source], tiny_model.tokenizer, 16)


def test_labels_must_be_grounded_captions(labelled_dir, tiny_model):
    source = ConversationSource.from_args(SourceArgs(path=str(labelled_dir / "synthetic.jsonl")))
    args = VisionAuxArgs(labels=str(labelled_dir / "synthetic.jsonl"), weight=1.0)
    with pytest.raises(ValueError, match="record 1 has no 'phrases'"):
        VisionAuxLoss.build(args, [source], tiny_model.tokenizer, 16)


def test_a_phrase_mask_of_another_size_is_named_by_the_record_check(labelled_dir, tiny_model, tmp_path):
    source = ConversationSource.from_args(SourceArgs(path=str(labelled_dir / "synthetic.jsonl")))
    records = [json.loads(x) for x in (labelled_dir / "synthetic_gcg.jsonl").read_text().splitlines()]
    records[1]["phrases"][0]["rle"] = encode_rle(np.zeros((8, 8), bool))
    bad = tmp_path / "labels.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in records))
    args = VisionAuxArgs(labels=str(bad), image_root=str(labelled_dir), weight=1.0)
    with pytest.raises(ValueError, match=r"labels.jsonl:2, record .*phrases\[0\].rle.size"):
        VisionAuxLoss.build(args, [source], tiny_model.tokenizer, 16)


def test_config_checks_name_the_key(labelled_dir, tmp_path):
    with pytest.raises(TrainConfigError, match="vision_aux.weight"):
        load_train_config(TINY_RECIPE, tiny_overrides(labelled_dir, tmp_path, **{
            "vision_aux.labels": str(labelled_dir / "synthetic_gcg.jsonl"),
            "vision_aux.weight": -1}))
    config = load_train_config(TINY_RECIPE, tiny_overrides(labelled_dir, tmp_path, **{
        "vision_aux.labels": str(tmp_path / "missing.jsonl"), "vision_aux.weight": 1}))
    from segllm.train.args import check_paths

    with pytest.raises(TrainConfigError, match="vision_aux.labels: .*missing.jsonl does not exist"):
        check_paths(config)


def test_a_run_with_the_word_loss_logs_it_every_step(labelled_dir, tmp_path):
    from segllm.train.trainer import train

    config = load_train_config(TINY_RECIPE, tiny_overrides(labelled_dir, tmp_path / "run", **{
        "max_steps": 4, "checkpoint.every": 0, "checkpoint.export": "false", "logging.every": 1,
        "vision_aux.labels": str(labelled_dir / "synthetic_gcg.jsonl"),
        "vision_aux.weight": 1.0}))
    train(config)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "loss" in x]
    assert len(steps) == 4 and all(np.isfinite(x["aux_loss"]) and x["aux_loss"] > 0 for x in steps)
