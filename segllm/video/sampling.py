"""Which frames to look at: candidates for the target frame, and VISA's global-local
reference frames around it.

- ``candidate_frames``: up to ``count`` frames spread evenly over the video (both ends
  included), the frames the text-guided scoring pass looks at.
- ``global_local_frames``: VISA's reference frames for the LLM: ``num_global`` spread evenly
  over the whole video (the context: what happens overall) and ``num_local`` nearest the target
  (the detail: what the target looks like around its frame), merged, sorted, without
  duplicates, and always holding the target itself.
"""

from __future__ import annotations

import numpy as np


def evenly_spaced(num_frames: int, count: int) -> list[int]:
    """``min(count, num_frames)`` distinct indices spread evenly, first and last included."""
    if num_frames < 1:
        raise ValueError(f"the video has no frames (num_frames={num_frames})")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if count >= num_frames:
        return list(range(num_frames))
    if count == 1:
        return [num_frames // 2]
    return sorted({int(round(x)) for x in np.linspace(0, num_frames - 1, count)})


def candidate_frames(num_frames: int, count: int = 8) -> list[int]:
    """The frames the scoring pass tries as the target."""
    return evenly_spaced(num_frames, count)


def local_window(num_frames: int, target: int, count: int) -> list[int]:
    """``count`` frames nearest ``target`` (the target first, then alternately after and
    before), shifted inward at the ends of the video."""
    order = [target]
    step = 1
    while len(order) < min(count, num_frames):
        for candidate in (target + step, target - step):
            if 0 <= candidate < num_frames and len(order) < count:
                order.append(candidate)
        step += 1
    return sorted(order)


def global_local_frames(num_frames: int, target: int, *, num_global: int = 8,
                        num_local: int = 4) -> list[int]:
    """VISA's reference frames: global (even over the video) plus local (around the target),
    sorted and distinct; the target is always one of them."""
    if not 0 <= target < num_frames:
        raise ValueError(f"target frame {target} is outside the video's {num_frames} frames")
    if num_global < 0 or num_local < 0:
        raise ValueError("num_global and num_local must be >= 0")
    frames = set(evenly_spaced(num_frames, num_global)) if num_global else set()
    frames.update(local_window(num_frames, target, max(1, num_local)))
    return sorted(frames)
