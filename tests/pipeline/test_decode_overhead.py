"""Per-round and per-token work the decode path no longer repeats: a lone session's next round
writes on in its cache (no copy of the history), and the never-generated ids are masked once a
step for every row, without touching the logits a caller passes in."""

from __future__ import annotations

import numpy as np
import torch

from segllm.inference.generation import GenerationConfig, choose_token
from tests.pipeline.helpers import forcing


def key_buffer(session):
    return session._past_layers[0]._key_buffer.data_ptr()


def test_a_lone_session_writes_each_round_into_the_cache_it_has(pipeline, image):
    generation = forcing(pipeline, "Sure, [SEG].")
    cached = pipeline.start(image, generation=generation)
    recomputed = pipeline.start(image, reuse_cache=False, generation=generation)
    questions = ["Segment the red square.", "Segment the shape next to <ref:0>.", "And <ref:1>?"]
    buffers = []
    for question in questions:
        got, want = cached.ask(question), recomputed.ask(question)
        buffers.append(key_buffer(cached))
        assert got.token_ids == want.token_ids
        assert all((x != y).mean() < 1e-3 for x, y in zip(got.masks, want.masks, strict=True))
        assert cached._past[0][0].data_ptr() == buffers[-1]  # the history is the buffer's start
    assert len(set(buffers)) == 1  # every round fitted in the room the first one left


def test_an_undone_round_is_overwritten_and_the_answers_stay_those_of_a_fresh_session(
        pipeline, image):
    generation = forcing(pipeline, "It is [SEG] here.")
    session = pipeline.start(image, generation=generation)
    session.ask("Segment the red square.")
    session.ask("Segment the circle next to <ref:0>.")
    session.undo()
    again = session.ask("Segment the triangle.")
    fresh = pipeline.start(image, generation=generation)
    fresh.ask("Segment the red square.")
    expected = fresh.ask("Segment the triangle.")
    assert again.token_ids == expected.token_ids
    assert all(np.array_equal(x, y) for x, y in zip(again.masks, expected.masks, strict=True))
    for (k, v), (fk, fv) in zip(session._past, fresh._past, strict=True):
        assert torch.allclose(k, fk, atol=1e-5) and torch.allclose(v, fv, atol=1e-5)


def test_choose_token_masks_what_it_is_told_and_leaves_the_logits_alone():
    logits = torch.tensor([0.0, 5.0, 1.0, 4.0])
    before = logits.clone()
    banned = torch.tensor([False, True, False, False])
    greedy = GenerationConfig(min_new_tokens=1)
    assert choose_token(logits, [], greedy, None, eos_id=3, suppressed=banned) == 2
    assert choose_token(logits, [7], greedy, None, eos_id=3, suppressed=banned) == 3
    assert choose_token(logits, [7], greedy, None, eos_id=3) == 1  # the caller masked nothing

    def double_in_place(ids, scores):
        return scores.mul_(2)

    with_processor = GenerationConfig(logits_processors=(double_in_place,))
    assert choose_token(logits, [], with_processor, None, eos_id=3) == 1
    assert torch.equal(logits, before)
