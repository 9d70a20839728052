"""From the target frame's mask to every frame of the video, in both directions.

- ``propagate_by_reprompting`` (weight-free, always there):
  the mask decoder is prompted on each frame with the same ``[SEG]`` states that segmented the
  target frame. Frames are visited from the target outwards (forward to the end, then
  backward to the start), one at a time, and each frame's mask is kept as COCO RLE, so memory
  stays at one frame's features whatever the video's length.
- ``Sam2Propagator``: SAM2's video predictor (``sam2`` on PyPI, an optional install, with its
  config and checkpoint) started from the target frame's mask and run forward and backward.

Both follow VISA's rule: an empty target-frame mask gives empty masks on every frame.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..images import InputError
from ..masks import encode_rle
from .timing import StageTimer

Progress = Callable[[int], None]
"""Called with the number of frames done so far."""


def outward_order(num_frames: int, target: int) -> list[int]:
    """The target, then every later frame, then every earlier one going back."""
    return [target, *range(target + 1, num_frames), *range(target - 1, -1, -1)]


def empty_masks(num_frames: int, size: tuple[int, int]) -> list[dict]:
    empty = encode_rle(np.zeros(size, dtype=bool))
    return [dict(empty) for _ in range(num_frames)]


def propagate_by_reprompting(pipeline, frames, *, seg_states: Sequence[torch.Tensor],
                             target: int, target_mask: np.ndarray,
                             progress: Progress | None = None,
                             timer: StageTimer | None = None) -> list[dict]:
    """One RLE per frame: the union of the masks the ``[SEG]`` states give on that frame
    (the target frame keeps ``target_mask``). Empty ``target_mask``: empty everywhere.
    ``timer`` adds up frame reading, the decoder's image encoding and mask decoding."""
    timer = timer or StageTimer()
    if not np.any(target_mask):
        return empty_masks(len(frames), tuple(target_mask.shape))
    out: list[dict | None] = [None] * len(frames)
    for done, index in enumerate(outward_order(len(frames), target), start=1):
        if index == target:
            mask = np.asarray(target_mask, dtype=bool)
        else:
            with timer.stage("frame reading"):
                image = frames.frame(index)
            with timer.stage("decoder image encoding"):
                session = pipeline.start(image, orientation="stored")
            with timer.stage("mask decoding"):
                masks, _ = session.decode_states(seg_states)
            mask = np.logical_or.reduce(masks) if masks else np.zeros(session.size, dtype=bool)
        out[index] = encode_rle(mask)
        if progress is not None:
            progress(done)
    return out


class Sam2Propagator:
    """SAM2's video predictor, prompted with the target frame's mask.

    Args:
        config: SAM2's model config name (e.g. ``configs/sam2.1/sam2.1_hiera_t.yaml``).
        checkpoint: its weights file.
        device: torch device.
    """

    def __init__(self, *, config: str, checkpoint: str | Path, device: str = "cpu"):
        build = _import_sam2_builder()
        if not Path(checkpoint).is_file():
            raise InputError(f"{checkpoint}: SAM2 checkpoint not found")
        self.predictor = build(config, str(checkpoint), device=device)

    @classmethod
    def from_predictor(cls, predictor) -> Sam2Propagator:
        """Wrap an already built ``SAM2VideoPredictor`` (tests, custom builds)."""
        self = cls.__new__(cls)
        self.predictor = predictor
        return self

    @torch.inference_mode()
    def propagate(self, frames, *, target: int, target_mask: np.ndarray,
                  progress: Progress | None = None) -> list[dict]:
        """One RLE per frame, SAM2 tracking the target mask forward then backward."""
        if not np.any(target_mask):
            return empty_masks(len(frames), tuple(target_mask.shape))
        out: list[dict | None] = [None] * len(frames)
        with tempfile.TemporaryDirectory(prefix="segllm-sam2-") as folder:
            for i in range(len(frames)):  # SAM2 reads a folder of JPEGs named by frame index
                frames.frame(i).save(Path(folder) / f"{i:05d}.jpg", quality=95)
            state = self.predictor.init_state(video_path=folder)
            self.predictor.add_new_mask(state, frame_idx=target, obj_id=1,
                                        mask=np.asarray(target_mask, dtype=bool))
            done = 0
            for reverse in (False, True):
                for index, _, logits in self.predictor.propagate_in_video(
                        state, start_frame_idx=target, reverse=reverse):
                    if out[index] is None:
                        out[index] = encode_rle((logits[0, 0] > 0).cpu().numpy())
                        done += 1
                        if progress is not None:
                            progress(done)
        out[target] = encode_rle(np.asarray(target_mask, dtype=bool))
        return [m if m is not None else empty_masks(1, target_mask.shape)[0] for m in out]


def _import_sam2_builder():
    try:
        from sam2.build_sam import build_sam2_video_predictor
    except ImportError:
        raise InputError("SAM2 propagation needs the 'sam2' package (pip install sam2) and a "
                         "SAM2 checkpoint with its config; without them use the weight-free "
                         "propagation (--propagation reprompt)") from None
    return build_sam2_video_predictor
