"""Grounded-caption (GCG) records as training conversations, mixed with MRSeg by ratio."""

from __future__ import annotations

import json

import pytest
import torch

from segllm.batching import collate
from segllm.grounding import GCG_INSTRUCTION, gcg_to_conversation, grounded_answer
from segllm.train.args import DataArgs, SourceArgs
from segllm.train.data import ConversationSource, MixedConversations
from segllm.train.objective import compute_objective


def test_answer_interleaves_phrases_and_seg_in_caption_order():
    caption = "A red circle and a blue square on a white background."
    phrases = [{"text": "A red circle", "span": [0, 12]}, {"text": "a blue square", "span": [17, 30]}]
    assert grounded_answer(caption, phrases) == (
        "<p>A red circle</p> [SEG] and <p>a blue square</p> [SEG] on a white background.")


@pytest.fixture(scope="module")
def gcg_dir(tmp_path_factory):
    from segllm.data_builders.synthetic import write_synthetic

    out = tmp_path_factory.mktemp("gcg")
    write_synthetic(out, num=6, seed=3, max_rounds=3)
    return out


def test_gcg_file_trains_one_target_per_phrase(gcg_dir, tiny_model):
    source = ConversationSource.from_args(SourceArgs(path=str(gcg_dir / "synthetic_gcg.jsonl")))
    raw = [json.loads(line) for line in (gcg_dir / "synthetic_gcg.jsonl").read_text().splitlines()]
    assert [r["id"] for r in source.records] == [r["id"] for r in raw]
    for converted, original in zip(source.records, raw, strict=True):
        (rnd,) = converted["rounds"]
        assert rnd["question"] == GCG_INSTRUCTION and rnd["refs"] == []
        assert rnd["answer"].count("[SEG]") == len(rnd["targets"]) == len(original["phrases"])
        assert rnd["answer"].count("<p>") == len(original["phrases"])
        assert converted == gcg_to_conversation(original)
    from segllm.batching import encode_sample

    samples = [encode_sample(*source.load(i), tiny_model.tokenizer, tiny_model.config)
               for i in range(2)]
    batch = collate(samples, tiny_model.config.token_ids["pad"])
    phrase_start = tiny_model.config.token_ids["phrase_start"]
    assert int((batch.input_ids == phrase_start).sum()) == sum(len(r["phrases"]) for r in raw[:2])
    # the phrase tags are in the supervised answer, so the model learns to write them
    assert int(((batch.labels == phrase_start)).sum()) == int((batch.input_ids == phrase_start).sum())
    out = compute_objective(tiny_model, batch)
    assert out.num_masks == sum(len(r["phrases"]) for r in raw[:2]) and torch.isfinite(out.loss)


def test_gcg_and_mrseg_mix_by_ratio_in_one_run(gcg_dir, tiny_model):
    args = DataArgs(sources=[SourceArgs(path=str(gcg_dir / "synthetic.jsonl"), weight=4.0),
                             SourceArgs(path=str(gcg_dir / "synthetic_gcg.jsonl"), weight=1.0)])
    data = MixedConversations.from_args(args, seed=0, tokenizer=tiny_model.tokenizer,
                                        model_config=tiny_model.config)
    picks = [data.sampler[p][0] for p in range(2000)]
    assert 0.15 < picks.count(1) / len(picks) < 0.25  # about 1 in 5 from the GCG file
    sample = data.encode(next(p for p in range(50) if data.sampler[p][0] == 1))
    assert sample.conversation.num_rounds == 1


def test_a_unified_record_is_refused_by_name(tmp_path, tiny_model):
    path = tmp_path / "unified.jsonl"
    path.write_text(json.dumps({"image": "a.png", "task": "detection", "annotations": [
        {"text": "cat", "bbox": [0, 0, 2, 2], "rle": None}]}) + "\n")
    with pytest.raises(ValueError, match="unified.jsonl: record 1 is a unified record"):
        ConversationSource.from_args(SourceArgs(path=str(path)))
