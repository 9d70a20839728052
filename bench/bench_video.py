"""Speed of the video path: J&F scoring, and a whole query through a synthetic clip.

    .venv/bin/python bench/bench_video.py [--frames 1000] [--clip-frames 64] [--preset small]
                                          [--tokens-per-frame N] [--skip-metrics] [--skip-model]

- **J&F**: ``segllm.eval.video.score_expression`` over ``--frames`` frames of 480x854 masks
  (a moving ellipse; the prediction is it shifted by a few pixels, so boundaries partly match),
  from COCO RLE as in a predictions file: decoding, J, F and R per frame. For comparison, F
  the way DAVIS computes it (dilating both boundary maps with the disk over the whole frame,
  here with scipy) on the same frames.
- **whole path**: ``VideoSegmenter.segment`` with a random model of ``--preset`` on a
  ``--clip-frames``-frame synthetic clip (``segllm.data_builders.synthetic_video``), the answer
  forced to ``Sure, [SEG].`` so a mask is propagated; frames per second, the process's CPU
  seconds (steadier than wall time on a shared machine), the images the CLIP vision tower
  encoded, and seconds per stage (sampling, frame reading, the reference frames' and the
  decoder's image encoding, the LLM, mask decoding; for the target choice and for the
  propagation separately). The LLM sees each candidate's global-local reference frames
  (8 + 4) at the preset's ``video.tokens_per_frame`` (``small``: 16), or
  ``--tokens-per-frame``; 0 gives the target frame alone. Each frame goes through the vision
  tower once per query (``segllm.video.frame_tokens``), whatever number of candidates see it.
"""

from __future__ import annotations

import argparse
import math
import random
import time

import numpy as np


def ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    ys, xs = np.ogrid[:h, :w]
    return ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1


def bench_metrics(frames: int, h: int = 480, w: int = 854) -> None:
    from scipy.ndimage import binary_dilation

    from segllm.eval.video import score_expression
    from segllm.eval.video_metrics import boundary_map, boundary_tolerance
    from segllm.masks import decode, encode_rle

    gts, preds = [], []
    for t in range(frames):
        cx = 150 + 550 * t / max(1, frames - 1)
        gts.append(encode_rle(ellipse(h, w, 240, cx, 120, 90)))
        preds.append(encode_rle(ellipse(h, w, 244, cx + 6, 118, 92)))
    foreground = gts
    start = time.perf_counter()
    score = score_expression(video="v", expression="0", type="referring", predicted=preds,
                             target=gts, foreground=foreground)
    ours = time.perf_counter() - start
    print(f"J&F over {frames} frames of {h}x{w}: {ours:.2f} s, {frames / ours:.0f} frames/s "
          f"(J {100 * score.j:.2f}, F {100 * score.f:.2f}, R {100 * score.r:.2f})")
    sample = min(frames, 100)
    radius = int(boundary_tolerance((h, w)))
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    disk = xx ** 2 + yy ** 2 <= radius ** 2
    start = time.perf_counter()
    for p, g in zip(preds[:sample], gts[:sample], strict=True):
        pb, gb = boundary_map(decode(p)), boundary_map(decode(g))
        binary_dilation(pb, structure=disk)
        binary_dilation(gb, structure=disk)
    dilation = (time.perf_counter() - start) / sample * frames
    print(f"  F by full-frame disk dilation (DAVIS's way, scipy), first {sample} frames scaled "
          f"to {frames}: {dilation:.2f} s; ours (J, F and R together) is {dilation / ours:.1f}x faster")


def bench_model(clip_frames: int, preset: str, candidates: int,
                tokens_per_frame: int | None = None) -> None:
    import torch

    from segllm.config import SegLLMConfig
    from segllm.data_builders.synthetic_video import generate_clip
    from segllm.modeling.model import SegLLMModel
    from segllm.pipeline import ForcedTokens, GenerationConfig, SegLLMPipeline
    from segllm.video.frames import FrameSource
    from segllm.video.pipeline import VideoSegmenter

    class ArrayFrames(FrameSource):
        def __init__(self, video):
            from PIL import Image

            self.images = [Image.fromarray(f) for f in video]
            super().__init__([f"{i:05d}" for i in range(len(video))], cache_frames=32,
                             limits=None)

        def _read(self, index):
            return self.images[index]

    torch.manual_seed(0)
    overrides = {} if tokens_per_frame is None else {"video.tokens_per_frame": tokens_per_frame}
    model = SegLLMModel.from_config(SegLLMConfig.from_name(preset, **overrides))
    pipeline = SegLLMPipeline(model)
    forced = GenerationConfig(max_new_tokens=8, logits_processors=(
        ForcedTokens.from_text(pipeline, "Sure, [SEG]."),))
    clip = generate_clip(random.Random(0), frames=clip_frames, size=64)
    frames = ArrayFrames(clip.frames)
    segmenter = VideoSegmenter(pipeline, num_candidates=candidates, generation=forced)
    segmenter.segment(ArrayFrames(clip.frames[:2]), "warm-up")
    tower_images = []
    hook = model.llava.model.vision_tower.register_forward_pre_hook(
        lambda _module, args: tower_images.append(len(args[0])))
    start, start_cpu = time.perf_counter(), time.process_time()
    result = segmenter.segment(frames, "the shape that ends up on the left")
    total, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    hook.remove()
    propagated = not math.isinf(max(result.target.scores))
    seen = (f"{len(result.reference_frames)} reference frames of "
            f"{model.config.video.tokens_per_frame} tokens" if result.reference_frames_in_llm
            else "no reference frames")
    print(f"whole path, {preset} preset, {clip_frames} frames of 64x64, {candidates} candidates, "
          f"{seen}: {total:.2f} s, {clip_frames / total:.2f} frames/s, {cpu:.2f} s CPU; "
          f"vision tower: {sum(tower_images)} images in {len(tower_images)} calls"
          + ("" if propagated else " (empty target mask: nothing propagated)"))
    for stage, seconds in sorted(result.timings.items(), key=lambda kv: -kv[1]):
        print(f"  {stage:40s} {seconds:7.2f} s  {100 * seconds / total:5.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--clip-frames", type=int, default=64)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--tokens-per-frame", type=int, default=None,
                        help="tokens per reference frame (default: the preset's; 0: none)")
    parser.add_argument("--skip-metrics", action="store_true")
    parser.add_argument("--skip-model", action="store_true")
    args = parser.parse_args()
    if not args.skip_metrics:
        bench_metrics(args.frames)
    if not args.skip_model:
        bench_model(args.clip_frames, args.preset, args.candidates, args.tokens_per_frame)


if __name__ == "__main__":
    main()
