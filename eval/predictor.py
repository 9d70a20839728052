"""What the runners need from a model: the ``Predictor`` protocol, and its adapter for ``SegLLMPipeline``.

The protocol (what ``segllm.pipeline`` implements; a test fake implements it too)::

    predictor.start(image: PIL.Image.Image) -> session          # one conversation per image
    session.ask(text: str, *, ref_masks: dict[int, list[np.ndarray]] | None = None) -> reply
    reply.text:   str                       # the generated answer, [SEG] tokens included
    reply.masks:  list[np.ndarray]          # one (H, W) bool mask per [SEG], original image size
    reply.scores: list[float]               # one per mask
    reply.boxes:  list[[x, y, w, h]] | None # optional decoder boxes, one per mask

Ground-truth-reference mode (how the runner feeds ground-truth masks of earlier rounds):
the runner calls ``session.ask(question, ref_masks={k: [mask, ...], ...})`` with one entry for
every round ``k`` that the question refers to with ``<ref:k>`` (the round's ``refs``). For
*this question only*, the session must encode those masks with the mask encoder in place of
the masks it stored for round ``k``: the ``i``-th ``<ref:k>`` placeholder of round ``k`` refers to
``ref_masks[k]`` (all masks of round ``k``, in target order; an empty list when round ``k`` had no
target). The session still stores its own predicted masks for the current round, and the text
history (the model's own answers) is unchanged. With ``ref_masks=None`` (own mode) the session
uses the masks it predicted itself. A session that cannot take ``ref_masks`` makes the runner
raise a clear error in gt mode; own mode never passes the argument.

Masks of the reply must have the image's size; the runner checks this and names the record and
round when they do not. The image comes in its stored orientation (EXIF is not applied: the data
set annotates the stored pixels), and a predictor must not rotate it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Reply(Protocol):
    text: str
    masks: Sequence[np.ndarray]
    scores: Sequence[float]


@runtime_checkable
class Session(Protocol):
    def ask(self, text: str, *, ref_masks: Mapping[int, Sequence[np.ndarray]] | None = None) -> Reply: ...


@runtime_checkable
class Predictor(Protocol):
    def start(self, image: Any) -> Session: ...


@dataclass
class SimpleReply:
    """A plain ``Reply`` (fakes and adapters)."""

    text: str
    masks: list = field(default_factory=list)
    scores: list = field(default_factory=list)
    boxes: list | None = None


class _PipelineSession:
    """Forwards ``ask``; passes ``ref_masks`` only in gt mode, so own mode works with any pipeline."""

    def __init__(self, session):
        self._session = session

    def ask(self, text: str, *, ref_masks=None):
        if ref_masks is None:
            return self._session.ask(text)
        try:
            return self._session.ask(text, ref_masks=ref_masks)
        except TypeError as exc:
            if "ref_masks" in str(exc):
                raise NotImplementedError(
                    "this SegLLMPipeline session does not accept ask(text, ref_masks=...), which "
                    "ground-truth-reference evaluation needs (see segllm.eval.predictor)"
                ) from exc
            raise


def _zero_mask_tokens(model) -> None:
    if model.mask_encoder is not None:
        model.mask_encoder.inference_scale = 0.0


def _drop_reference_masks(model) -> None:
    model.decoder.reference_encoder = None


ABLATIONS = {
    "mask-tokens": _zero_mask_tokens,  # the LLM gets zero vectors in every <ref:k> slot
    "reference-masks": _drop_reference_masks,  # the decoder gets no referenced masks
}
"""Inference-time ablations of a trained model: how much its answers use each path back to
earlier rounds. (Retraining without a path is the other kind of ablation; see the model card.)"""


class PipelinePredictor:
    """``Predictor`` over ``segllm.pipeline.SegLLMPipeline`` (imported only when built).

    Args:
        model_dir: what ``SegLLMPipeline.from_pretrained`` loads.
        device: torch device string.
        max_new_tokens: longest answer (grounded captions need more than a round's answer).
        ablate: names from :data:`ABLATIONS` to apply to the loaded model.
    """

    def __init__(self, model_dir: str, device: str = "cpu", max_new_tokens: int = 64,
                 ablate: Sequence[str] = ()):
        from segllm.pipeline import GenerationConfig, SegLLMPipeline

        unknown = sorted(set(ablate) - set(ABLATIONS))
        if unknown:
            raise ValueError(f"unknown ablation(s) {unknown}; known: {sorted(ABLATIONS)}")
        self.pipeline = SegLLMPipeline.from_pretrained(
            model_dir, device=device, generation=GenerationConfig(max_new_tokens=max_new_tokens))
        for name in ablate:
            ABLATIONS[name](self.pipeline.model)
        self.name = str(model_dir) + "".join(f" (ablated: {name})" for name in ablate)

    def start(self, image) -> _PipelineSession:
        # data-set images: the annotations (and the runner's size check) are on the stored pixels
        try:
            return _PipelineSession(self.pipeline.start(image, orientation="stored"))
        except TypeError as exc:
            if "orientation" not in str(exc):
                raise
        # a pipeline without the argument: the runner's image has no orientation left to apply
        return _PipelineSession(self.pipeline.start(image))
