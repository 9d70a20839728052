"""Chat sessions: where masks come from, the cache across rounds, undo, sampling, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segllm.batching import build_batch, decode_rle
from segllm.pipeline import GenerationConfig, InputError
from tests.conftest import box_mask, make_conversation
from tests.pipeline.helpers import cache_snapshot, forcing, same_cache


def test_reply_has_one_bool_mask_per_seg_at_the_original_size(pipeline, image):
    session = pipeline.start(image)
    reply = session.ask("Segment the red square.",
                        generation=forcing(pipeline, "Sure, [SEG] and [SEG]."))
    assert reply.text == "Sure, [SEG] and [SEG]."
    assert reply.round == 0 and reply.question == "Segment the red square."
    assert reply.token_ids[-1] == pipeline.token_ids["eos"]
    assert reply.token_ids.count(pipeline.token_ids["seg"]) == 2
    assert len(reply.masks) == len(reply.scores) == len(reply.boxes) == 2
    for mask, box in zip(reply.masks, reply.boxes, strict=True):
        assert mask.dtype == np.bool_ and mask.shape == (48, 64)
        ys, xs = np.nonzero(mask)
        assert box == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert all(isinstance(s, float) for s in reply.scores)
    assert session.history == [reply]


def test_masks_come_from_the_states_that_predict_seg(pipeline, image):
    """Recompute by hand: one uncached pass over the conversation, states at the position
    before each [SEG], seg head, SAM. The session's masks and scores must be these."""
    session = pipeline.start(image)
    reply = session.ask("Segment the red square.",
                        generation=forcing(pipeline, "Sure, [SEG] and [SEG]."))
    model = pipeline.model
    ids = torch.tensor([session.token_ids])
    with torch.no_grad():
        embeds = model.embed_inputs(ids, pixel_values=session._clip_pixels[None])
        hidden = model.language_model(inputs_embeds=embeds, use_cache=False).last_hidden_state
        rows, cols = model.seg_positions(ids)
        assert (ids[0, cols + 1] == pipeline.token_ids["seg"]).all() and len(cols) == 2
        features = model.encode_images_for_decoder(session._decoder_pixels[None])
        logits, scores, _ = model.decode_masks(hidden[0, cols], features,
                                               session._decoder_input_size, (48, 64))
    for mine, theirs in zip(reply.masks, logits > 0, strict=True):
        assert np.array_equal(mine, theirs.numpy())
    assert np.allclose(reply.scores, scores.numpy(), atol=1e-5)


def test_teacher_forced_session_matches_the_training_forward(pipeline):
    """Three rounds with <ref:k> fed ground-truth masks (the eval gt protocol): same tokens
    and masks as SegLLMModel.forward on the batch the data pipeline builds."""
    record, image = make_conversation("conv-a", seed=1)
    batch = build_batch([(record, image)], pipeline.tokenizer, pipeline.config)
    with torch.no_grad():
        expected = pipeline.model(**batch.model_inputs())
    session = pipeline.start(image)
    masks, scores = [], []
    for rnd in record["rounds"]:
        ref_masks = {k: [decode_rle(t["rle"], (48, 64), "test") for t in
                         record["rounds"][k]["targets"]] for k in rnd["refs"]}
        reply = session.ask(rnd["question"], answer=rnd["answer"], ref_masks=ref_masks or None)
        assert reply.text == rnd["answer"]
        masks += reply.masks
        scores += reply.scores
    assert session.token_ids == batch.input_ids[0].tolist()
    assert len(masks) == 4
    for mine, theirs in zip(masks, expected.mask_logits[0] > 0, strict=True):
        assert np.array_equal(mine, theirs.numpy())
    assert np.allclose(scores, expected.mask_scores[0].numpy(), atol=1e-5)


CONVERSATION = [  # (question, forced answer or None for free greedy decoding)
    ("Segment the red square.", "Sure, [SEG]."),
    ("Segment the shape right of <ref:0>.", None),
    ("Segment <ref:0> and the shape below it.", "[SEG] and [SEG]."),
    ("What is left of <ref:2>?", None),
    ("Segment <ref:2> and <ref:0> together.", "It is [SEG]."),
]


def run_conversation(pipeline, image, reuse_cache: bool):
    session = pipeline.start(image, reuse_cache=reuse_cache)
    replies, cache_lengths = [], []
    for question, answer in CONVERSATION:
        generation = forcing(pipeline, answer) if answer else None
        replies.append(session.ask(question, generation=generation))
        cache_lengths.append((session.cache_length, len(session.token_ids)))
    return session, replies, cache_lengths


def test_cached_rounds_equal_recomputing_the_whole_history(pipeline, image):
    cached, with_cache, lengths = run_conversation(pipeline, image, reuse_cache=True)
    fresh, recomputed, no_cache = run_conversation(pipeline, image, reuse_cache=False)
    assert cached.token_ids == fresh.token_ids
    assert [len(r.masks) for r in with_cache] == [1, 0, 2, 0, 1]
    for a, b in zip(with_cache, recomputed, strict=True):
        assert a.token_ids == b.token_ids and a.text == b.text
        assert len(a.masks) == len(b.masks)
        for x, y in zip(a.masks, b.masks, strict=True):
            assert np.array_equal(x, y)
        assert np.allclose(a.scores, b.scores, atol=1e-5)
    assert [cache for cache, _ in no_cache] == [0] * 5
    # the cache holds every token but the last one generated (and the </s> the template adds
    # when an answer hit max_new_tokens): rounds 1 and 3 ran out of tokens
    eos = pipeline.token_ids["eos"]
    assert [r.token_ids[-1] == eos for r in with_cache] == [True, False, True, False, True]
    for reply, (cache, history) in zip(with_cache, lengths, strict=True):
        assert cache == history - (1 if reply.token_ids[-1] == eos else 2)
    assert with_cache[3].warnings == []  # round 2's masks were there to refer to


def test_a_round_feeds_only_its_new_tokens_and_sam_runs_once(pipeline, image):
    lm_inputs: list[int] = []
    sam_calls: list[int] = []
    hooks = [
        pipeline.model.language_model.register_forward_pre_hook(
            lambda _m, _a, kw: lm_inputs.append(kw["inputs_embeds"].shape[1]), with_kwargs=True),
        pipeline.model.decoder.sam.image_encoder.register_forward_pre_hook(
            lambda _m, args: sam_calls.append(args[0].shape[0])),
    ]
    try:
        session = pipeline.start(image)
        session.ask("Segment the red square.", generation=forcing(pipeline, "Sure, [SEG]."))
        before = session.token_ids
        lm_inputs.clear()
        reply = session.ask("Segment the shape right of <ref:0>.",
                            generation=forcing(pipeline, "It is [SEG]."))
        after = session.token_ids
        prefix = len(after) - len(before) - len(reply.token_ids)
        # prefill: the pending </s> and this round's prefix; then one token per decode step
        assert lm_inputs == [1 + prefix] + [1] * (len(reply.token_ids) - 1)
        assert prefix < 40 < len(before)  # far less than the history
        assert sam_calls == [1]  # SAM features of the image: once, at start
        recompute = pipeline.start(image, reuse_cache=False)
        lm_inputs.clear()
        first = recompute.ask("Segment the red square.",
                              generation=forcing(pipeline, "Sure, [SEG]."))
        recompute.ask("Segment the shape right of <ref:0>.",
                      generation=forcing(pipeline, "It is [SEG]."))
        assert lm_inputs[len(first.token_ids)] == len(before) + prefix  # the whole history
        assert sam_calls == [1, 1, 1]
    finally:
        for hook in hooks:
            hook.remove()


def test_undo_restores_the_cache_and_the_history(pipeline, image):
    session = pipeline.start(image)
    first = session.ask("Segment the red square.", generation=forcing(pipeline, "Sure, [SEG]."))
    ids, cache = session.token_ids, cache_snapshot(session)
    question, generation = "Segment the shape right of <ref:0>.", forcing(pipeline, "It is [SEG].")
    second = session.ask(question, generation=generation)
    assert session.cache_length > len(ids) - 1
    assert session.undo() is second
    assert session.token_ids == ids and session.cache_length == len(ids) - 1
    assert same_cache(cache_snapshot(session), cache)
    assert session.history == [first]
    again = session.ask(question, generation=generation)
    assert again.token_ids == second.token_ids
    assert all(np.array_equal(a, b) for a, b in zip(again.masks, second.masks, strict=True))
    session.undo()
    session.undo()
    assert session.token_ids == [] and session.cache_length == 0 and session.history == []
    with pytest.raises(InputError, match="no round to undo"):
        session.undo()
    redo = session.ask("Segment the red square.", generation=forcing(pipeline, "Sure, [SEG]."))
    assert redo.token_ids == first.token_ids and np.array_equal(redo.masks[0], first.masks[0])


def test_sampling_is_seeded_and_top_p_or_top_k_narrow_it_to_greedy(pipeline, image):
    question = "Describe the image."
    greedy = pipeline.start(image).ask(
        question, generation=GenerationConfig(max_new_tokens=6)).token_ids

    def sample(**kw):
        cfg = GenerationConfig(max_new_tokens=6, do_sample=True, **kw)
        return pipeline.start(image).ask(question, generation=cfg).token_ids

    a = sample(temperature=1.5, top_p=0.95, seed=7)
    assert a == sample(temperature=1.5, top_p=0.95, seed=7)
    assert a != sample(temperature=1.5, top_p=0.95, seed=8)
    assert a != greedy
    assert sample(top_k=1, seed=3) == greedy
    assert sample(top_p=1e-6, seed=4) == greedy


def test_min_and_max_new_tokens_fix_the_answer_length(pipeline, image):
    eos = pipeline.token_ids["eos"]
    cfg = GenerationConfig(max_new_tokens=6, min_new_tokens=6,
                           logits_processors=(lambda ids, scores: _prefer(scores, eos),))
    reply = pipeline.start(image).ask("Segment it.", generation=cfg)
    # eos is banned until 6 tokens: 5 non-eos tokens were forced to something else, the 6th
    # would have been eos but max_new_tokens ends the answer first
    assert len(reply.token_ids) == 6 and eos not in reply.token_ids


def _prefer(scores, token):
    scores = scores.clone()
    scores[..., token] += 1e4
    return scores


def test_batched_sessions_match_asking_each_alone(pipeline, image):
    rng = np.random.default_rng(5)
    small = rng.integers(0, 255, size=(40, 56, 3), dtype=np.uint8)
    square = rng.integers(0, 255, size=(30, 30, 3), dtype=np.uint8)
    short, long_ = forcing(pipeline, "[SEG]."), forcing(pipeline, "Sure, it is [SEG] and [SEG] here.")

    def sessions():
        a = pipeline.start(image)  # one round of history, then free greedy decoding
        a.ask("Segment the red square.", generation=forcing(pipeline, "Sure, [SEG]."))
        return a, pipeline.start(small, generation=short), pipeline.start(square, generation=long_)

    questions = ["Segment the shape right of <ref:0>.", "Segment the red square.",
                 "Segment every shape in this picture, please."]
    batched = sessions()
    replies = pipeline.ask_batch(list(zip(batched, questions, strict=True)))
    alone = sessions()
    expected = [s.ask(q) for s, q in zip(alone, questions, strict=True)]
    lengths = [10, len(pipeline.answer_token_ids("[SEG].")),
               len(pipeline.answer_token_ids("Sure, it is [SEG] and [SEG] here."))]
    assert [len(r.token_ids) for r in replies] == lengths  # rows finish at different steps
    assert len(set(lengths)) == 3
    for got, want in zip(replies, expected, strict=True):
        assert got.token_ids == want.token_ids
        assert len(got.masks) == len(want.masks)
        assert all(np.array_equal(x, y) for x, y in zip(got.masks, want.masks, strict=True))
        assert np.allclose(got.scores, want.scores, atol=1e-5)
    for b, s in zip(batched, alone, strict=True):  # pads were taken out of every cache
        ended = s.history[-1].token_ids[-1] == pipeline.token_ids["eos"]
        assert b.cache_length == s.cache_length == len(s.token_ids) - (1 if ended else 2)
        for (kb, vb), (ks, vs) in zip(b._past, s._past, strict=True):
            assert torch.allclose(kb, ks, atol=1e-5) and torch.allclose(vb, vs, atol=1e-5)
    follow_up = [s.ask("And <ref:0>?", generation=short) for s in batched]
    assert [r.token_ids for r in follow_up] == [s.ask("And <ref:0>?", generation=short).token_ids
                                                for s in alone]


def test_a_refused_request_leaves_every_session_of_the_batch_unchanged(pipeline, image):
    a, b = pipeline.start(image), pipeline.start(image)
    with pytest.raises(InputError, match="request 1: the question is empty"):
        pipeline.ask_batch([(a, "Segment it."), (b, "  ")])
    assert a.history == [] == b.history and a.token_ids == [] == b.token_ids
    with pytest.raises(InputError, match="only once"):
        pipeline.ask_batch([(a, "x"), (a, "y")])


def test_ground_truth_references_replace_own_masks_for_one_question(pipeline, image):
    session = pipeline.start(image)
    own = session.ask("Segment the red square.", generation=forcing(pipeline, "Sure, [SEG]."))
    own_mask = own.masks[0].copy()
    gt = box_mask(48, 64, 30, 6, 50, 30)
    question, generation = "Segment the shape right of <ref:0>.", forcing(pipeline, "It is [SEG].")
    with_gt = session.ask(question, ref_masks={0: [gt]}, generation=generation)
    session.undo()
    with_own = session.ask(question, generation=generation)
    assert np.array_equal(session.history[0].masks[0], own_mask)  # stored masks untouched
    assert with_gt.scores != with_own.scores  # the mask encoder saw a different mask
    with pytest.raises(InputError, match=r"ref_masks\[0\]\[0\] has shape \(10, 10\)"):
        session.ask(question, ref_masks={0: [np.ones((10, 10), bool)]})
    with pytest.raises(InputError, match="round 5, which does not exist"):
        session.ask(question, ref_masks={5: [gt]})
    assert session.num_rounds == 2


def test_the_eval_predictor_protocol_drives_a_saved_model(model_dir, image):
    from segllm.eval.predictor import PipelinePredictor, Predictor, Session

    predictor = PipelinePredictor(str(model_dir))
    assert isinstance(predictor, Predictor)
    session = predictor.start(image)
    assert isinstance(session, Session)
    first = session.ask("Segment the red square.")
    second = session.ask("Segment the shape right of <ref:0>.",
                         ref_masks={0: [box_mask(48, 64, 4, 4, 20, 20)]})
    assert isinstance(first.text, str) and isinstance(second.text, str)
    assert all(m.shape == (48, 64) for m in first.masks + second.masks)


def test_from_pretrained_gives_the_same_answers_as_the_model_in_memory(pipeline, model_dir, image):
    from segllm.pipeline import SegLLMPipeline

    loaded = SegLLMPipeline.from_pretrained(model_dir, generation=pipeline.generation)
    a = pipeline.start(image).ask("Segment the red square.",
                                  generation=forcing(pipeline, "Sure, [SEG]."))
    b = loaded.start(image).ask("Segment the red square.",
                                generation=forcing(loaded, "Sure, [SEG]."))
    assert a.token_ids == b.token_ids and np.array_equal(a.masks[0], b.masks[0])
    assert a.scores == pytest.approx(b.scores, abs=1e-6)
    free_a = pipeline.start(image).ask("What is this?")
    free_b = loaded.start(image).ask("What is this?")
    assert free_a.token_ids == free_b.token_ids and len(free_a.token_ids) == 10
