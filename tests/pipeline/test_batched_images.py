"""ask_batch encodes its sessions' images together: the vision tower once per batch (images
and mask crops alike), the mask decoder's image encoder once for the sessions opened with
``start_batch``; the answers and masks are those of asking each session alone."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from tests.pipeline.helpers import forcing

QUESTIONS = [["Segment the red square.", "Segment the circle.", "Segment every shape."],
             ["Segment the shape right of <ref:0>.", "And <ref:0>?", "Again <ref:0>, please."]]


@pytest.fixture()
def images():
    rng = np.random.default_rng(7)
    return [rng.integers(0, 255, size=size, dtype=np.uint8)
            for size in ((48, 64, 3), (40, 56, 3), (30, 30, 3))]


@contextlib.contextmanager
def count_calls(module):
    """How many times ``module`` runs while the block runs."""
    calls = []
    handle = module.register_forward_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def answers(pipeline):
    return [forcing(pipeline, "Sure, [SEG]."), forcing(pipeline, "It is [SEG] and [SEG]."),
            forcing(pipeline, "[SEG].")]


@pytest.mark.parametrize("reuse_cache", [True, False])
def test_ask_batch_matches_asking_each_session_alone(pipeline, images, reuse_cache):
    generations = answers(pipeline)
    batched = pipeline.start_batch(images, reuse_cache=reuse_cache)
    alone = [pipeline.start(im, reuse_cache=reuse_cache, generation=g)
             for im, g in zip(images, generations, strict=True)]
    for questions in QUESTIONS:  # round 1 brings round 0's masks back through the crops
        for s, g in zip(batched, generations, strict=True):
            s.generation = g
        replies = pipeline.ask_batch(list(zip(batched, questions, strict=True)))
        expected = [s.ask(q) for s, q in zip(alone, questions, strict=True)]
        for got, want in zip(replies, expected, strict=True):
            assert got.token_ids == want.token_ids and got.text == want.text
            assert len(got.masks) == len(want.masks) > 0
            for x, y in zip(got.masks, want.masks, strict=True):
                assert x.shape == y.shape and (x != y).mean() < 1e-3
            assert np.allclose(got.scores, want.scores, atol=1e-4)


def test_the_vision_tower_runs_once_per_batch_and_the_decoder_encoder_once_per_start(
        pipeline, images):
    tower = pipeline.model.llava.model.vision_tower
    encoder = pipeline.model.decoder.sam.image_encoder
    with count_calls(encoder) as encoded:
        sessions = pipeline.start_batch(images)
    assert len(encoded) == 1
    for s, g in zip(sessions, answers(pipeline), strict=True):
        s.generation = g
    for questions in QUESTIONS:  # new images, then three sessions' mask crops
        with count_calls(tower) as towered, count_calls(encoder) as encoded:
            pipeline.ask_batch(list(zip(sessions, questions, strict=True)))
        assert len(towered) == 1 and len(encoded) == 0


def test_recomputing_sessions_encode_their_images_together_every_round(pipeline, images):
    sessions = pipeline.start_batch(images, reuse_cache=False)
    encoder = pipeline.model.decoder.sam.image_encoder
    with count_calls(encoder) as encoded:
        pipeline.ask_batch([(s, "Segment it.") for s in sessions])
        pipeline.ask_batch([(s, "Segment it again.") for s in sessions])
    assert len(encoded) == 2


def test_sessions_started_alone_get_their_features_kept_and_reused(pipeline, images):
    one = pipeline.start(images[0])
    features = one.decoder_features()
    [two] = pipeline.start_batch(images[1:2])
    encoder = pipeline.model.decoder.sam.image_encoder
    with count_calls(encoder) as encoded:
        pipeline.ask_batch([(one, "Segment it."), (two, "Segment it.")])
    assert len(encoded) == 0 and one.decoder_features() is features
