"""Text-guided target frame: a scoring pass of the query over candidate frames.

VISA asks a second video LLM (LLaMA-VID, over HTTP) "which percentage mark of the video
should I check?". We ask our own model the query itself on each candidate frame
(``segllm.video.sampling.candidate_frames``), in batched runs of the chat engine, and keep the
frame whose answer carries the mask the decoder is most confident of (its predicted IoU,
``Reply.scores``). Why: it needs no second model, it scores exactly what the rest of the path
uses (the mask that gets propagated), and the chosen frame's ``[SEG]`` states are kept, so the
target frame costs no extra LLM run. A model that takes reference frames
(``config.video.tokens_per_frame``) sees each candidate with its own global-local reference
frames (``reference_frames_for``), as it would as the target; each frame is encoded into its
tokens once for the whole pass (``segllm.video.frame_tokens``), however many candidates see it.
A frame whose answer has no non-empty mask scores ``-inf``; when every candidate does, the
target keeps an empty mask and VISA's rule applies (empty everywhere).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..inference.generation import GenerationConfig
from ..inference.session import Reply
from .frame_tokens import FrameTokenCache
from .timing import StageTimer


@dataclass
class TargetChoice:
    """The chosen target frame, its answer and [SEG] states, and every candidate's score."""

    index: int
    reply: Reply
    seg_states: list[torch.Tensor]
    candidates: list[int]
    scores: list[float]
    size: tuple[int, int]  # (H, W) of the frames
    reference_frames: list[int] = field(default_factory=list)  # what the LLM saw beside it

    @property
    def mask(self) -> np.ndarray:
        """The union of the target frame's masks (empty when the answer has none)."""
        if not self.reply.masks:
            return np.zeros(self.size, dtype=bool)
        return np.logical_or.reduce([np.asarray(m, dtype=bool) for m in self.reply.masks])


def candidate_score(reply: Reply) -> float:
    """The decoder's predicted IoU of the best non-empty mask; ``-inf`` without one."""
    scores = [s for m, s in zip(reply.masks, reply.scores, strict=True) if np.any(m)]
    return max(scores) if scores else -math.inf


def choose_target_frame(pipeline, frames, query: str, *, candidates: list[int],
                        generation: GenerationConfig | None = None,
                        batch_size: int = 4, timer: StageTimer | None = None,
                        reference_frames_for: Callable[[int], list[int]] | None = None,
                        frame_tokens: FrameTokenCache | None = None) -> TargetChoice:
    """Ask ``query`` on every candidate frame (``batch_size`` sessions per engine run) and keep
    the best-scoring one (the earliest on ties). ``reference_frames_for(candidate)``: the
    frames the LLM sees beside that candidate (none when not given), their tokens from
    ``frame_tokens`` (default: a cache for this pass holding ``frames.cache_frames`` frames).
    ``timer`` adds up frame reading, the reference frames' and the decoder's image encoding,
    the LLM and mask decoding."""
    if not candidates:
        raise ValueError("no candidate frames to choose the target from")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generation = generation or pipeline.generation
    timer = timer or StageTimer()
    best: tuple[float, int, Reply, list[torch.Tensor]] | None = None
    scores: list[float] = []
    references = {i: reference_frames_for(i) if reference_frames_for else [] for i in candidates}
    if frame_tokens is None:
        frame_tokens = FrameTokenCache(pipeline, frames, capacity=frames.cache_frames, timer=timer)
    for start in range(0, len(candidates), batch_size):
        chunk = candidates[start:start + batch_size]
        with timer.stage("frame reading"):
            images = [frames.frame(i) for i in chunk]
        around = frame_tokens.tokens_for([references[i] for i in chunk])
        with timer.stage("decoder image encoding"):
            sessions = [pipeline.start(image, orientation="stored", reference_frame_tokens=refs)
                        for image, refs in zip(images, around, strict=True)]
        with timer.stage("llm"):
            jobs = [s.prepare(query, ref_masks=None, answer=None, generation=generation)
                    for s in sessions]
            outcomes = pipeline.run_jobs(jobs)
        for index, session, job, outcome in zip(chunk, sessions, jobs, outcomes, strict=True):
            with timer.stage("mask decoding"):
                reply = session.commit(job, outcome)
            score = candidate_score(reply)
            scores.append(score)
            if best is None or score > best[0]:
                best = (score, index, reply, list(outcome.seg_states))
    _, index, reply, states = best
    return TargetChoice(index=index, reply=reply, seg_states=states, candidates=list(candidates),
                        scores=scores, size=frames.size, reference_frames=references[index])
