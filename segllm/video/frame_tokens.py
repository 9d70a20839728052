"""A video's frames as LLM tokens, encoded once per query.

In the target-frame scoring pass every candidate is asked with its own global-local reference
frames (``segllm.video.sampling.global_local_frames``). The global frames are the same for
every candidate and the local windows of neighbouring candidates overlap, so encoding each
candidate's frames with it (vision tower, pooling, projector) repeats most of the work. A
frame's tokens depend on the frame alone, so ``FrameTokenCache`` keeps them by frame index and
encodes only the frames it has not seen, all of a batch's in one call.

It holds at most ``capacity`` frames' tokens (the least recently used are dropped; the video
path uses the frame source's ``cache_frames``, its cap on frames held in memory); a dropped
frame asked for again is encoded again, with the same result.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from .timing import StageTimer


class FrameTokenCache:
    """Tokens [tokens_per_frame, H] of the frames of ``frames`` (a ``segllm.video.frames``
    source), by frame index, for ``pipeline.start(reference_frame_tokens=...)``.

    Args:
        pipeline: the loaded model (``SegLLMPipeline``; its ``encode_reference_frames``).
        frames: the video.
        capacity: frames whose tokens are kept at most.
        timer: adds up "frame reading" and "reference frame encoding".
    """

    def __init__(self, pipeline, frames, *, capacity: int, timer: StageTimer | None = None):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.pipeline = pipeline
        self.frames = frames
        self.capacity = capacity
        self.timer = timer or StageTimer()
        self.encoded = 0  # frames encoded so far (a frame dropped and asked again counts twice)
        self._tokens: OrderedDict[int, torch.Tensor] = OrderedDict()

    def tokens_for(self, groups: list[list[int]]) -> list[torch.Tensor | None]:
        """Each group's tokens [len(group), tokens_per_frame, H], in the group's order (None
        for an empty group); the frames of every group not kept yet are encoded together."""
        wanted = list(dict.fromkeys(i for group in groups for i in group))
        found = {i: self._tokens[i] for i in wanted if i in self._tokens}
        missing = [i for i in wanted if i not in found]
        if missing:
            with self.timer.stage("frame reading"):
                images = [self.frames.frame(i) for i in missing]
            with self.timer.stage("reference frame encoding"):
                encoded = self.pipeline.encode_reference_frames(images, orientation="stored")
            self.encoded += len(missing)
            # each its own storage: a kept frame must not hold its whole batch in memory
            found.update((i, t.clone()) for i, t in zip(missing, encoded, strict=True))
        self._keep(wanted, found)
        return [torch.stack([found[i] for i in group]) if group else None for group in groups]

    def _keep(self, indices: list[int], tokens: dict[int, torch.Tensor]) -> None:
        """Mark ``indices`` most recently used, keeping at most ``capacity`` frames."""
        for i in indices:
            self._tokens[i] = tokens[i]
            self._tokens.move_to_end(i)
        while len(self._tokens) > self.capacity:
            self._tokens.popitem(last=False)

    def __len__(self) -> int:
        return len(self._tokens)
