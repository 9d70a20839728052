"""Video reasoning segmentation, VISA's path on segllm's model: pick the target frame for the
query, segment it through ``[SEG]``, propagate its mask to every frame.

    from segllm.pipeline import SegLLMPipeline
    from segllm.video.frames import open_video
    from segllm.video.pipeline import VideoSegmenter

    segmenter = VideoSegmenter(SegLLMPipeline.from_pretrained("out/"))
    result = segmenter.segment(open_video("clip.mp4", fps=2), "the dog that jumps last")
    result.masks          # one COCO RLE per frame
    result.target.index   # the frame the query was answered on; result.timings: seconds per stage

Steps (each its own module): ``sampling.candidate_frames`` spreads ``num_candidates`` frames
over the video; ``target.choose_target_frame`` asks the query on each and keeps the frame
whose mask the decoder is most confident of, with its ``[SEG]`` states; ``propagation``
carries that mask to every frame (the weight-free re-prompting of the decoder, or SAM2's
video predictor when given). An empty target mask gives empty masks everywhere (VISA's rule).

``reference_frames`` (``sampling.global_local_frames``: ``num_global`` over the video plus
``num_local`` around the target) are the frames VISA gives its LLM besides the target. A model
that takes them (``config.video.tokens_per_frame`` > 0: pooled image tokens per frame, before
the target's) sees each candidate with its own reference frames in the scoring pass, so the
chosen target's ``[SEG]`` comes from the frames it is propagated with; each frame is encoded
into its tokens once per query (``frame_tokens.FrameTokenCache``). A model trained
without them (``tokens_per_frame`` 0, the shipped shapes model) sees the target alone; the
frames are then only recorded (``VideoResult.reference_frames_in_llm`` says which).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..inference.generation import GenerationConfig
from .propagation import Progress, Sam2Propagator, propagate_by_reprompting
from .sampling import candidate_frames, global_local_frames
from .target import TargetChoice, choose_target_frame
from .timing import StageTimer

PROPAGATIONS = ("reprompt", "sam2")


@dataclass
class VideoResult:
    """One query over one video: a mask per frame and how it was found."""

    query: str
    frame_names: list[str]
    masks: list[dict]
    target: TargetChoice
    reference_frames: list[int]
    timings: dict[str, float] = field(default_factory=dict)
    reference_frames_in_llm: bool = False  # whether the LLM saw them beside the target

    @property
    def target_frame(self) -> str:
        return self.frame_names[self.target.index]


class VideoSegmenter:
    """Segments a query through a video with a ``SegLLMPipeline``.

    Args:
        pipeline: the loaded model.
        num_candidates: frames the target-selection pass asks the query on.
        num_global, num_local: VISA's reference frames (global over the video, local around
            the target); given to the LLM when the model takes them, recorded either way.
        batch_size: candidate frames per batched engine run.
        sam2: a ``Sam2Propagator`` to propagate with SAM2 instead of re-prompting the decoder.
        generation: decoding settings (default: the pipeline's).
    """

    def __init__(self, pipeline, *, num_candidates: int = 8, num_global: int = 8,
                 num_local: int = 4, batch_size: int = 4, sam2: Sam2Propagator | None = None,
                 generation: GenerationConfig | None = None):
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        self.pipeline = pipeline
        self.num_candidates = num_candidates
        self.num_global = num_global
        self.num_local = num_local
        self.batch_size = batch_size
        self.sam2 = sam2
        self.generation = generation

    @property
    def propagation(self) -> str:
        return "sam2" if self.sam2 is not None else "reprompt"

    def segment(self, frames, query: str, *, progress: Progress | None = None) -> VideoResult:
        """Masks of ``query`` on every frame of ``frames`` (a ``segllm.video.frames`` source)."""
        choose, spread = StageTimer(), StageTimer()
        with choose.stage("sampling"):
            candidates = candidate_frames(len(frames), self.num_candidates)
        feeds_frames = self.pipeline.takes_reference_frames
        target = choose_target_frame(self.pipeline, frames, query, candidates=candidates,
                                     generation=self.generation, batch_size=self.batch_size,
                                     timer=choose, reference_frames_for=(
                                         self._references(len(frames)) if feeds_frames else None))
        with choose.stage("sampling"):
            references = global_local_frames(len(frames), target.index,
                                             num_global=self.num_global, num_local=self.num_local)
        if self.sam2 is not None:
            with spread.stage("sam2"):
                masks = self.sam2.propagate(frames, target=target.index, target_mask=target.mask,
                                            progress=progress)
        else:
            masks = propagate_by_reprompting(self.pipeline, frames, seg_states=target.seg_states,
                                             target=target.index, target_mask=target.mask,
                                             progress=progress, timer=spread)
        timings = {f"target: {k}": v for k, v in choose.as_dict().items()}
        timings.update({f"propagation: {k}": v for k, v in spread.as_dict().items()})
        return VideoResult(query=query, frame_names=list(frames.names), masks=masks,
                           target=target, reference_frames=references, timings=timings,
                           reference_frames_in_llm=feeds_frames)

    def _references(self, num_frames: int):
        """Candidate -> its global-local reference frames."""
        return lambda index: global_local_frames(num_frames, index, num_global=self.num_global,
                                                 num_local=self.num_local)
