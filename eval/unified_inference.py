"""Per-task inference of a decoder-only QueryMeld checkpoint: the model behind
``segllm eval instance|detection|panoptic|semantic|referring|foreground --model DIR``.

``DIR`` is what ``segllm train`` writes for a ``kind: decoder`` recipe
(``train/decoder_training.py``): ``querymeld.json`` (the decoder's config and the text encoder
it was trained with), ``decoder.safetensors`` and, for a trained text encoder (hashed words),
``text_encoder.safetensors``. :class:`QueryMeldPredictor` rebuilds both, encodes each image
once and decodes it with the texts as classes (``QueryMeldDecoder.decode_texts``), then turns
every query's class probabilities (sigmoid of the query-text dot product), boxes and mask
logits into the predictions-file annotations of ``segllm.eval.unified``, by task as MaskDINO
(whose hyperparameters QueryMeldNet follows) does:

- **instance**: the ``top_k`` best (query, text) pairs over all queries and texts; each
  scored by its class probability times its mask score (the mean mask probability inside the
  mask, Mask2Former's instance scoring); empty masks are left out;
- **detection**: the same pairs, each with its query's box and class probability;
- **semantic**: per pixel, each text's sum over queries of class probability x mask
  probability; the argmax text owns the pixel (one annotation per text present, scored by its
  mean share of that sum over its pixels);
- **panoptic**: queries whose best class probability exceeds ``object_threshold`` (0.25)
  compete per pixel by probability x mask probability; a query keeps its pixels (mask
  probability >= 0.5 among them) unless less than ``overlap_threshold`` (0.8) of its own mask
  is left, and segments of one stuff text merge (the caller names the stuff texts; the rest
  are things): non-overlapping segments;
- **referring** / **foreground**: for each expression, the query with the best probability
  for it gives the mask (an empty mask is an answer of nothing).

Masks are upsampled to the image size in chunks of queries, so a large image with many
queries never holds every query's full-size mask at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segllm.masks import encode_rle, mask_to_bbox

from .errors import EvalInputError

CONFIG_FILE = "querymeld.json"
DECODER_FILE = "decoder.safetensors"
TEXT_ENCODER_FILE = "text_encoder.safetensors"


@dataclass
class InferenceSettings:
    """MaskDINO's test settings (``TEST.OBJECT_MASK_THRESHOLD``, ``OVERLAP_THRESHOLD``)."""

    top_k: int = 100  # instance / detection predictions per image (COCO's 100)
    object_threshold: float = 0.25  # panoptic: a query's class probability to take part
    overlap_threshold: float = 0.8  # panoptic: share of its mask a query must keep
    mask_chunk: int = 16  # queries upsampled to the image size at once


@dataclass
class Decoded:
    """One image's last-layer outputs: class probabilities [Q, K], boxes [Q, 4] (cx, cy, w, h
    in [0, 1] of the padded input square), mask logits [Q, h4, w4], and the sizes to map them
    back."""

    probs: torch.Tensor
    boxes: torch.Tensor
    mask_logits: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    side: int  # the padded square's side in input pixels


class QueryMeldPredictor:
    """A ``UnifiedPredictor`` (``segllm.eval.unified``) over a decoder-only QueryMeld model.

    Args:
        decoder: a ``QueryMeldDecoder``.
        text_encoder: the text encoder it was trained with (``query/text.py``).
        device: torch device for both.
        settings: thresholds and sizes (:class:`InferenceSettings`).
    """

    def __init__(self, decoder, text_encoder, *, device: str = "cpu",
                 settings: InferenceSettings | None = None):
        self.decoder = decoder.to(device).eval()
        self.text_encoder = text_encoder.to(device).eval()
        self.device = torch.device(device)
        self.settings = settings or InferenceSettings()

    @classmethod
    def from_dir(cls, path: str | Path, *, device: str = "cpu",
                 settings: InferenceSettings | None = None) -> QueryMeldPredictor:
        """The model a decoder training wrote to ``path``; ``EvalInputError`` naming the file
        or field when ``path`` is not such a folder."""
        decoder, text_encoder = load_decoder_run(Path(path))
        return cls(decoder, text_encoder, device=device, settings=settings)

    # -- the UnifiedPredictor interface ------------------------------------------------------

    @torch.no_grad()
    def predict(self, image: np.ndarray, texts: list[str], task: str, *,
                stuff: frozenset[str] = frozenset()) -> list[dict]:
        """Annotations for one ``(H, W, 3)`` uint8 image (module docstring, by ``task``)."""
        if not texts:
            return []
        classes = list(dict.fromkeys(texts))  # an expression asked twice is one class
        decoded = self.decode(image, classes)
        if task == "instance":
            return instance_annotations(self.decoder, decoded, classes, self.settings)
        if task == "detection":
            return detection_annotations(decoded, classes, self.settings)
        if task == "semantic":
            return semantic_annotations(self.decoder, decoded, classes, self.settings)
        if task == "panoptic":
            return panoptic_annotations(self.decoder, decoded, classes, stuff, self.settings)
        if task in ("referring", "foreground"):
            return paired_annotations(self.decoder, decoded, classes,
                                      [classes.index(t) for t in texts], self.settings)
        raise ValueError(f"unknown unified task {task!r}")

    def decode(self, image: np.ndarray, texts: list[str]) -> Decoded:
        pixels, input_size = self.decoder.preprocess(
            torch.from_numpy(np.array(image)).permute(2, 0, 1), self.decoder.config)
        features = self.decoder.encode_image(pixels[None].to(self.device))
        embeddings = self.text_encoder.encode(texts).to(self.device)
        (outputs,) = self.decoder.decode_texts(features, [embeddings])
        final = outputs.final
        return Decoded(probs=final.logits[0].float().sigmoid(), boxes=final.boxes[0].float(),
                       mask_logits=final.masks[0].float(), input_size=tuple(input_size),
                       original_size=(image.shape[0], image.shape[1]),
                       side=self.decoder.config.image_size)


# --------------------------------------------------------------------------- loading


def load_decoder_run(folder: Path):
    """(decoder, text encoder) from a decoder training's output folder, both in eval mode."""
    from segllm.modeling.decoders.query.text import TextEncoderArgs, build_text_encoder
    from segllm.modeling.decoders.querymeld import QueryMeldConfig, QueryMeldDecoder
    from segllm.modeling.loading import load_state_dict_strict
    from segllm.typed_config import ConfigError, KeyPath, build_checked

    summary_path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise EvalInputError(f"--model {folder}: no such folder")
    if not summary_path.is_file():
        raise EvalInputError(
            f"--model {folder}: no {CONFIG_FILE}; unified tasks take a decoder-only QueryMeld "
            "folder written by 'segllm train' with a 'kind: decoder' recipe (a SegLLM model "
            "folder answers mrseg / refer / reasonseg / gcg)")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise EvalInputError(f"{summary_path}: not valid JSON ({err})") from None
    if not isinstance(summary, dict) or summary.get("decoder") != "querymeld":
        got = summary.get("decoder") if isinstance(summary, dict) else summary
        raise EvalInputError(f"{summary_path}: 'decoder' must be 'querymeld', got {got!r}")
    for key in ("decoder_config", "text_encoder"):
        if not isinstance(summary.get(key), dict):
            raise EvalInputError(f"{summary_path}: '{key}' must be a mapping")
    text_fields = {k: v for k, v in summary["text_encoder"].items() if k != "name"}
    try:
        config = build_checked(QueryMeldConfig, summary["decoder_config"],
                               KeyPath(f"{summary_path}: decoder_config"))
        text_args = build_checked(TextEncoderArgs, text_fields,
                                  KeyPath(f"{summary_path}: text_encoder"))
        text_encoder = build_text_encoder(text_args)
    except (ConfigError, FileNotFoundError, RuntimeError) as err:
        raise EvalInputError(str(err)) from None
    if config.prompt_dim != text_encoder.dim:
        raise EvalInputError(f"{summary_path}: decoder_config.prompt_dim {config.prompt_dim} "
                             f"differs from the text encoder's width {text_encoder.dim}")
    decoder = QueryMeldDecoder(config, mask_aware=False)
    load_state_dict_strict(decoder, read_safetensors(folder / DECODER_FILE),
                           source=str(folder / DECODER_FILE))
    if any(p.requires_grad for p in text_encoder.parameters()):  # trained with the decoder
        load_state_dict_strict(text_encoder, read_safetensors(folder / TEXT_ENCODER_FILE),
                               source=str(folder / TEXT_ENCODER_FILE))
    return decoder.eval(), text_encoder.eval()


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise EvalInputError(f"{path}: missing (a decoder training writes it beside "
                             f"{CONFIG_FILE})")
    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise EvalInputError(f"{path}: not a safetensors file ({err})") from None


# --------------------------------------------------------------------------- masks


def mask_probabilities(decoder, decoded: Decoded, queries: Sequence[int], chunk: int
                       ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(queries, mask probabilities [n, H, W], masks [n, H, W] bool) at the image size, a
    chunk of ``queries`` at a time (the mask: logit above the decoder's threshold)."""
    queries = list(queries)
    for start in range(0, len(queries), chunk):
        part = queries[start:start + chunk]
        logits = decoder.to_original_size(decoded.mask_logits[part], decoded.input_size,
                                          decoded.original_size)
        yield part, logits.sigmoid(), logits > decoder.mask_threshold


def annotation(text: str, score: float, mask: torch.Tensor) -> dict:
    array = mask.cpu().numpy()
    return {"text": text, "score": float(score), "rle": encode_rle(array),
            "bbox": mask_to_bbox(array) if array.any() else [0.0, 0.0, 0.0, 0.0]}


def top_pairs(probs: torch.Tensor, top_k: int) -> list[tuple[int, int, float]]:
    """The ``top_k`` best (query, text, probability) over every query and text."""
    flat = probs.flatten()
    values, index = flat.topk(min(top_k, flat.numel()))
    k = probs.shape[1]
    return [(i // k, i % k, float(v)) for i, v in zip(index.tolist(), values.tolist(), strict=True)]


# --------------------------------------------------------------------------- tasks


def instance_annotations(decoder, decoded: Decoded, texts: list[str],
                         settings: InferenceSettings) -> list[dict]:
    """The decoder's own instance inference (``QueryMeldDecoder.scored_pairs``)."""
    return [annotation(texts[t], score, mask) for _, t, score, mask in decoder.scored_pairs(
        decoded.probs, decoded.mask_logits, decoded.input_size, decoded.original_size,
        top_k=settings.top_k, chunk=settings.mask_chunk)]


def detection_annotations(decoded: Decoded, texts: list[str],
                          settings: InferenceSettings) -> list[dict]:
    return [{"text": texts[t], "score": p, "bbox": box_pixels(decoded, q)}
            for q, t, p in top_pairs(decoded.probs, settings.top_k)]


def box_pixels(decoded: Decoded, query: int) -> list[float]:
    """Query ``query``'s box as [x, y, w, h] pixels of the original image, clipped to it
    (the box is in fractions of the padded square; the image fills its top-left part)."""
    (h_in, w_in), (height, width) = decoded.input_size, decoded.original_size
    cx, cy, w, h = decoded.boxes[query].tolist()
    sx, sy = decoded.side * width / w_in, decoded.side * height / h_in
    x0, y0 = max(0.0, (cx - w / 2) * sx), max(0.0, (cy - h / 2) * sy)
    x1, y1 = min(float(width), (cx + w / 2) * sx), min(float(height), (cy + h / 2) * sy)
    return [x0, y0, max(0.0, x1 - x0), max(0.0, y1 - y0)]


def semantic_annotations(decoder, decoded: Decoded, texts: list[str],
                         settings: InferenceSettings) -> list[dict]:
    height, width = decoded.original_size
    per_text = torch.zeros((len(texts), height, width))
    queries = range(decoded.probs.shape[0])
    for part, probs, _ in mask_probabilities(decoder, decoded, queries, settings.mask_chunk):
        per_text += torch.einsum("qk,qhw->khw", decoded.probs[part].cpu(), probs.cpu())
    labels = per_text.argmax(0)
    share = per_text.max(0).values / per_text.sum(0).clamp(min=1e-12)
    out = []
    for k, text in enumerate(texts):
        region = labels == k
        if region.any():
            out.append(annotation(text, float(share[region].mean()), region))
    return out


def panoptic_annotations(decoder, decoded: Decoded, texts: list[str], stuff: frozenset[str],
                         settings: InferenceSettings) -> list[dict]:
    scores, labels = decoded.probs.max(dim=1)
    kept = [q for q in range(scores.numel()) if float(scores[q]) > settings.object_threshold]
    if not kept:
        return []
    height, width = decoded.original_size
    best = torch.full((height, width), -1.0)
    owner = torch.full((height, width), -1, dtype=torch.long)
    for part, probs, _ in mask_probabilities(decoder, decoded, kept, settings.mask_chunk):
        weighted = scores[part].cpu()[:, None, None] * probs.cpu()
        value, index = weighted.max(0)
        better = value > best
        best[better] = value[better]
        owner[better] = torch.tensor(part)[index[better]]
    segments: list[dict] = []
    stuff_at: dict[str, int] = {}
    for part, probs, _ in mask_probabilities(decoder, decoded, kept, settings.mask_chunk):
        for j, q in enumerate(part):
            own = probs[j].cpu() >= 0.5
            mask = (owner == q) & own
            if not own.any() or not mask.any():
                continue
            if (owner == q).sum() / own.sum() < settings.overlap_threshold:
                continue  # most of its mask went to better queries: a duplicate
            text, score = texts[int(labels[q])], float(scores[q])
            if text in stuff and text in stuff_at:  # one segment per stuff text
                merged = segments[stuff_at[text]]
                merged["mask"] |= mask
                merged["score"] = max(merged["score"], score)
                continue
            if text in stuff:
                stuff_at[text] = len(segments)
            segments.append({"text": text, "score": score, "mask": mask})
    return [annotation(s["text"], s["score"], s["mask"]) for s in segments]


def paired_annotations(decoder, decoded: Decoded, texts: list[str], asked: list[int],
                       settings: InferenceSettings) -> list[dict]:
    """One answer per asked expression (``asked``: indices into ``texts``), in order: the
    mask of the query with the best probability for it."""
    best = decoded.probs.argmax(dim=0)  # [K]
    queries = sorted({int(best[k]) for k in asked})
    masks = {}
    for part, _, binary in mask_probabilities(decoder, decoded, queries, settings.mask_chunk):
        masks.update(zip(part, binary, strict=True))
    return [annotation(texts[k], float(decoded.probs[int(best[k]), k]), masks[int(best[k])])
            for k in asked]
