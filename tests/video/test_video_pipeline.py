"""The video path end to end with the tiny random model: target choice, weight-free
propagation in both directions, VISA's empty rule, the SAM2 adapter's contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segllm import masks as rle_ops
from segllm.images import InputError
from segllm.video.frames import ListedFrames, open_video
from segllm.video.pipeline import VideoSegmenter
from segllm.video.propagation import Sam2Propagator, outward_order, propagate_by_reprompting
from segllm.video.target import candidate_score
from tests.pipeline.helpers import forcing

REVOS_FRAMES = "tests/fixtures/revos/JPEGImages/vid_b"


def _segment(pipeline, frames, answer: str, **options):
    segmenter = VideoSegmenter(pipeline, generation=forcing(pipeline, answer), **options)
    return segmenter.segment(frames, "the square that stays in the lower left")


def test_every_frame_gets_the_decoders_answer_to_the_same_seg(pipeline):
    frames = open_video(REVOS_FRAMES, cache_frames=2)
    result = _segment(pipeline, frames, "Sure, [SEG].", num_candidates=3)
    assert len(result.masks) == len(frames) == 4
    assert result.target.candidates == [0, 2, 3]
    assert result.target.index in result.reference_frames
    best = max(result.target.scores)
    assert result.target.scores[result.target.candidates.index(result.target.index)] == best
    # the target frame keeps its own mask; every other frame is the decoder re-prompted there
    target_mask = rle_ops.decode(result.masks[result.target.index])
    assert np.array_equal(target_mask, result.target.mask)
    for i in range(len(frames)):
        session = pipeline.start(frames.frame(i), orientation="stored")
        expected = np.logical_or.reduce(session.decode_states(result.target.seg_states)[0])
        assert np.array_equal(rle_ops.decode(result.masks[i]), expected), i
    assert {"target: llm", "propagation: decoder image encoding"} <= set(result.timings)
    assert frames.cached <= 2


def test_identical_frames_give_identical_masks_in_both_directions(pipeline, tmp_path):
    frame = "tests/fixtures/revos/JPEGImages/vid_b/00000.jpg"
    frames = ListedFrames([frame] * 5)
    result = _segment(pipeline, frames, "Sure, [SEG].", num_candidates=1)
    assert result.target.index == 2  # one candidate: the middle frame
    masks = [rle_ops.decode(m) for m in result.masks]
    if not masks[2].any():
        pytest.fail("the tiny model gave an empty target mask; pick another seed")
    assert all(np.array_equal(m, masks[2]) for m in masks)


def test_empty_target_mask_gives_empty_masks_everywhere(pipeline):
    frames = open_video(REVOS_FRAMES)
    result = _segment(pipeline, frames, "It is not there.", num_candidates=4)
    assert result.target.reply.masks == []
    assert all(s == float("-inf") for s in result.target.scores)
    assert all(not rle_ops.decode(m).any() for m in result.masks)
    assert "propagation: decoder image encoding" not in result.timings  # nothing re-prompted


def test_outward_order_visits_every_frame_once_from_the_target():
    assert outward_order(6, 2) == [2, 3, 4, 5, 1, 0]
    assert sorted(outward_order(9, 8)) == list(range(9))


def test_reprompting_reports_progress(pipeline):
    frames = open_video(REVOS_FRAMES)
    session = pipeline.start(frames.frame(1), orientation="stored")
    states = [torch.randn(pipeline.config.llm.hidden_size)]
    target_mask = np.ones(session.size, dtype=bool)
    seen = []
    masks = propagate_by_reprompting(pipeline, frames, seg_states=states, target=1,
                                     target_mask=target_mask, progress=seen.append)
    assert seen == [1, 2, 3, 4] and len(masks) == 4
    assert rle_ops.decode(masks[1]).all()


def test_candidate_score_prefers_a_confident_non_empty_mask():
    from segllm.inference.session import Reply

    empty, full = np.zeros((2, 2), bool), np.ones((2, 2), bool)
    reply = Reply(question="q", text="t", masks=[empty, full], scores=[0.9, 0.4], boxes=[],
                  round=0)
    assert candidate_score(reply) == 0.4
    assert candidate_score(Reply("q", "t", [], [], [], 0)) == float("-inf")


class _RecordingSam2:
    """SAM2VideoPredictor's three calls, recording them, echoing the mask shifted per frame."""

    def __init__(self):
        self.calls = []

    def init_state(self, video_path):
        from pathlib import Path

        self.calls.append(("init", sorted(p.name for p in Path(video_path).iterdir())))
        return {}

    def add_new_mask(self, state, frame_idx, obj_id, mask):
        self.calls.append(("mask", frame_idx, obj_id))
        state["mask"] = torch.from_numpy(mask)

    def propagate_in_video(self, state, start_frame_idx, reverse):
        self.calls.append(("propagate", start_frame_idx, reverse))
        order = range(start_frame_idx, -1, -1) if reverse else range(start_frame_idx, 4)
        for i in order:
            logits = torch.where(torch.roll(state["mask"], i, dims=1), 1.0, -1.0)
            yield i, [1], logits[None, None]


def test_sam2_adapter_tracks_forward_then_backward_from_the_target():
    frames = open_video(REVOS_FRAMES)
    fake = _RecordingSam2()
    mask = np.zeros(frames.size, dtype=bool)
    mask[2:5, 3:6] = True
    masks = Sam2Propagator.from_predictor(fake).propagate(frames, target=2, target_mask=mask)
    assert fake.calls[0] == ("init", ["00000.jpg", "00001.jpg", "00002.jpg", "00003.jpg"])
    assert fake.calls[1:] == [("mask", 2, 1), ("propagate", 2, False), ("propagate", 2, True)]
    for i in range(4):
        expected = mask if i == 2 else np.roll(mask, i, axis=1)
        assert np.array_equal(rle_ops.decode(masks[i]), expected)
    empty = Sam2Propagator.from_predictor(fake).propagate(
        frames, target=0, target_mask=np.zeros(frames.size, dtype=bool))
    assert all(not rle_ops.decode(m).any() for m in empty) and len(fake.calls) == 4


def test_sam2_without_the_package_says_what_to_install():
    try:
        import sam2  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="pip install sam2"):
            Sam2Propagator(config="configs/sam2.1/sam2.1_hiera_t.yaml", checkpoint="missing.pt")
    else:
        with pytest.raises(InputError, match="checkpoint not found"):
            Sam2Propagator(config="configs/sam2.1/sam2.1_hiera_t.yaml", checkpoint="missing.pt")
