"""Each frame of a video goes through the vision tower once per query, however many candidate
frames hold it among their reference frames, and the answers are the ones of encoding each
candidate's reference frames with it (``segllm.video.frame_tokens``)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from segllm import masks as rle_ops
from segllm.data_builders.synthetic_video import generate_clip
from segllm.video.frame_tokens import FrameTokenCache
from segllm.video.frames import FrameSource
from segllm.video.pipeline import VideoSegmenter
from segllm.video.propagation import propagate_by_reprompting
from segllm.video.sampling import candidate_frames, global_local_frames
from tests.pipeline.helpers import forcing

QUERY = "the shape that ends up on the left"
OPTIONS = {"num_candidates": 4, "num_global": 3, "num_local": 3, "batch_size": 2}


class ClipFrames(FrameSource):
    """A synthetic clip's frames, held in memory."""

    def __init__(self, *, frames: int, cache_frames: int):
        from PIL import Image

        clip = generate_clip(random.Random(3), frames=frames, size=32)
        self.images = [Image.fromarray(f) for f in clip.frames]
        super().__init__([f"{i:05d}" for i in range(frames)], cache_frames=cache_frames,
                         limits=None)

    def _read(self, index: int):
        return self.images[index]


@pytest.fixture
def tower_rows(tiny_model, monkeypatch) -> list[int]:
    """The batch size of every call of the vision tower while the test runs."""
    tower = tiny_model.llava.model.vision_tower
    forward = tower.forward
    rows: list[int] = []

    def counting(pixel_values, *args, **kwargs):
        rows.append(len(pixel_values))
        return forward(pixel_values, *args, **kwargs)

    monkeypatch.setattr(tower, "forward", counting)
    return rows


def _references(num_frames: int) -> dict[int, list[int]]:
    return {c: global_local_frames(num_frames, c, num_global=OPTIONS["num_global"],
                                   num_local=OPTIONS["num_local"])
            for c in candidate_frames(num_frames, OPTIONS["num_candidates"])}


def test_each_frame_is_encoded_once_per_query(pipeline, tower_rows):
    frames = ClipFrames(frames=12, cache_frames=32)
    references = _references(len(frames))
    distinct = set().union(*references.values())
    assert sum(map(len, references.values())) > len(distinct)  # the candidates share frames
    segmenter = VideoSegmenter(pipeline, generation=forcing(pipeline, "Sure, [SEG]."), **OPTIONS)
    result = segmenter.segment(frames, QUERY)
    assert result.reference_frames_in_llm and result.target.candidates == list(references)
    # one image per candidate, plus each distinct reference frame once (not once per candidate)
    assert sum(tower_rows) == len(references) + len(distinct)
    assert "target: reference frame encoding" in result.timings


def test_answers_match_encoding_each_candidates_frames_with_it(pipeline):
    """Chosen frame, scores, [SEG] states and every propagated mask as the plain path gives
    them (each candidate's session encoding its own reference frames); a cache smaller than a
    candidate's reference frames re-encodes them and gives the same answer."""
    frames = ClipFrames(frames=12, cache_frames=32)
    forced = forcing(pipeline, "Sure, [SEG].")
    plain = {}
    for candidate, refs in _references(len(frames)).items():
        session = pipeline.start(frames.frame(candidate), orientation="stored",
                                 reference_frames=[frames.frame(i) for i in refs])
        job = session.prepare(QUERY, ref_masks=None, answer=None, generation=forced)
        outcome = pipeline.run_jobs([job])[0]
        plain[candidate] = (session.commit(job, outcome), outcome.seg_states)
    for cache_frames in (32, 2):
        frames.cache_frames = cache_frames
        result = VideoSegmenter(pipeline, generation=forced, **OPTIONS).segment(frames, QUERY)
        target = result.target
        expected_scores = [max(plain[c][0].scores) for c in target.candidates]
        assert target.scores == pytest.approx(expected_scores, rel=1e-5, abs=1e-6)
        # the best-scoring candidate; this random model's scores tie to within float noise
        # (which the two paths' different batching decides), so a tie may go either way
        best = max(max(plain[c][0].scores) for c in plain)
        assert max(plain[target.index][0].scores) == pytest.approx(best, rel=1e-5, abs=1e-6)
        reply, states = plain[target.index]
        assert all(np.array_equal(a, b) for a, b in zip(target.reply.masks, reply.masks,
                                                        strict=True))
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(target.seg_states, states,
                                                                   strict=True))
        expected = propagate_by_reprompting(pipeline, frames, seg_states=states,
                                            target=target.index, target_mask=target.mask)
        assert [rle_ops.decode(m).tolist() for m in result.masks] == \
            [rle_ops.decode(m).tolist() for m in expected]


def test_the_cache_keeps_at_most_capacity_frames_and_encodes_dropped_ones_again(pipeline):
    frames = ClipFrames(frames=6, cache_frames=32)
    cache = FrameTokenCache(pipeline, frames, capacity=2)
    first, again = cache.tokens_for([[0, 1, 2], [2, 1]])
    assert cache.encoded == 3 and len(cache) == 2  # frame 0 dropped, 1 and 2 kept
    assert torch.equal(again, first[[2, 1]])
    cache.tokens_for([[2], [1]])
    assert cache.encoded == 3
    (zero,) = cache.tokens_for([[0]])
    assert cache.encoded == 4
    alone = pipeline.encode_reference_frames([frames.frame(0)], orientation="stored")
    assert torch.allclose(zero, alone, atol=1e-6)
    assert cache.tokens_for([[]]) == [None]
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        FrameTokenCache(pipeline, frames, capacity=0)


def test_frame_tokens_fill_the_slots_as_the_frames_pixels_do(pipeline, tiny_model):
    frames = ClipFrames(frames=3, cache_frames=4)
    refs = [frames.frame(0), frames.frame(2)]
    by_pixels = pipeline.start(frames.frame(1), orientation="stored", reference_frames=refs)
    by_tokens = pipeline.start(frames.frame(1), orientation="stored",
                               reference_frame_tokens=pipeline.encode_reference_frames(
                                   refs, orientation="stored"))
    replies = [s.ask("Segment the square.", answer="Sure, [SEG].") for s in (by_pixels, by_tokens)]
    assert by_pixels.token_ids == by_tokens.token_ids
    assert all(np.array_equal(a, b) for a, b in zip(replies[0].masks, replies[1].masks,
                                                    strict=True))
    with pytest.raises(Exception, match="as images or as their tokens, not both"):
        pipeline.start(frames.frame(1), orientation="stored", reference_frames=refs,
                       reference_frame_tokens=torch.zeros(2, 4, 8))
    with pytest.raises(Exception, match=r"tokens of shape \(2, 3, 8\): this model takes \[F, 4, "):
        pipeline.start(frames.frame(1), orientation="stored",
                       reference_frame_tokens=torch.zeros(2, 3, 8))
    ids = torch.tensor([[tiny_model.config.token_ids["frame"]] * 4])
    with pytest.raises(ValueError, match=r"frame_tokens of shape \(1, 3, 8\): expected"):
        tiny_model.embed_inputs(ids, frame_tokens=torch.zeros(1, 3, 8))
