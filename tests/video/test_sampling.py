"""Frame sampling: candidates spread over the video; VISA's global-local reference frames."""

from __future__ import annotations

import itertools

import pytest

from segllm.video.sampling import (
    candidate_frames,
    evenly_spaced,
    global_local_frames,
    local_window,
)


def test_candidates_span_the_video_and_are_distinct():
    assert candidate_frames(64, 8) == [0, 9, 18, 27, 36, 45, 54, 63]
    assert candidate_frames(5, 8) == [0, 1, 2, 3, 4]
    assert candidate_frames(1, 8) == [0]
    assert evenly_spaced(10, 1) == [5]


@pytest.mark.parametrize("num_frames, num_global, num_local",
                         list(itertools.product([1, 2, 7, 30, 101], [0, 1, 2, 8], [0, 1, 4, 12])))
def test_target_is_always_a_reference_frame(num_frames, num_global, num_local):
    for target in {0, num_frames // 2, num_frames - 1}:
        frames = global_local_frames(num_frames, target, num_global=num_global,
                                     num_local=num_local)
        assert target in frames
        assert frames == sorted(set(frames))
        assert all(0 <= f < num_frames for f in frames)
        if num_global >= 2:  # the global frames reach both ends of the video
            assert frames[0] == 0 and frames[-1] == num_frames - 1
        assert len(frames) <= max(num_global, 0) + max(num_local, 1)


def test_local_frames_surround_the_target_and_shift_at_the_ends():
    assert local_window(100, 50, 4) == [49, 50, 51, 52]  # after, before, after
    assert local_window(100, 0, 4) == [0, 1, 2, 3]
    assert local_window(100, 99, 3) == [97, 98, 99]
    assert local_window(3, 1, 10) == [0, 1, 2]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="outside"):
        global_local_frames(10, 10)
    with pytest.raises(ValueError, match="no frames"):
        candidate_frames(0)
