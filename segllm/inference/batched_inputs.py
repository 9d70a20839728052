"""The input embeddings of several jobs with one pass of the vision tower.

``SegLLMModel.embed_inputs`` runs the vision tower once per call: once for a session's image
and once more for its masked crops, so a batch of N sessions ran it up to 2N times on batches of
one. Here every job's CLIP inputs (new images and the mask encoder's crops) go through the tower
together in one call, the projector maps the image patches and the crops' CLS features, and
each job's slots are filled as ``embed_inputs`` fills them (same order, same dtype casts).

Jobs of models whose inputs need more of the tower than its last feature layer (a video's
reference frames, the region encoder's boxes) keep ``embed_inputs``' own path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..modeling.llava import vision_hidden

if TYPE_CHECKING:
    from .engine import Job


def takes_batched_path(job: Job) -> bool:
    """Whether the job's inputs are image tokens and mask-encoder tokens only."""
    has_frames = ((job.frame_pixel_values is not None and len(job.frame_pixel_values) > 0)
                  or job.frame_tokens is not None)
    has_regions = job.feed_region_boxes is not None and len(job.feed_region_boxes) > 0
    return not has_frames and not has_regions


@torch.inference_mode()
def embed_jobs(model, jobs: Sequence[Job]) -> list[torch.Tensor]:
    """[L_i, H] input embeddings of each job (``takes_batched_path`` jobs only)."""
    device = model.device
    images = [job.pixel_values for job in jobs if job.pixel_values is not None]
    crops = [job.feed_crops for job in jobs if len(job.feed_crops)]
    all_crops = torch.cat(crops).to(device) if crops else None
    image_feats, crop_cls = encode_clip_inputs(
        model, images=torch.stack(images).to(device) if images else None, crops=all_crops)
    crop_tokens = box_tokens = None
    if crop_cls is not None:
        if model.mask_encoder is None:
            raise ValueError("the sequence references earlier masks but this model has no "
                             "mask encoder (config.mask_encoder.enabled is False)")
        boxes = torch.cat([job.feed_boxes for job in jobs if len(job.feed_crops)]).to(device)
        # the crops' CLS features are already computed: the encoder takes them as they are
        crop_tokens, box_tokens = model.mask_encoder(all_crops, boxes, lambda _: crop_cls)
    token_ids = model.config.token_ids
    out, next_image, next_crop = [], 0, 0
    for job in jobs:
        ids = torch.tensor([job.new_ids], device=device)
        embeds = model.language_model.embed_tokens(ids)
        image = image_feats[next_image] if job.pixel_values is not None else None
        next_image += job.pixel_values is not None
        embeds = _fill(embeds, ids == token_ids["image"], image, what="image")
        n = len(job.feed_crops)
        crop = crop_tokens[next_crop:next_crop + n] if n else None
        box = box_tokens[next_crop:next_crop + n] if n else None
        next_crop += n
        embeds = _fill(embeds, ids == token_ids["mask_crop"], crop, what="mask-crop")
        embeds = _fill(embeds, ids == token_ids["mask_box"], box, what="mask-box")
        out.append(embeds[0])
    return out


def encode_clip_inputs(model, *, images: torch.Tensor | None, crops: torch.Tensor | None
                       ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One vision-tower call over ``images`` [I, 3, S, S] and ``crops`` [R, 3, S, S]:
    (projected patch features [I, N, H] of the images, projected CLS features [R, H] of the
    crops), as ``image_tokens`` and ``cls_tokens`` give them."""
    parts = [p for p in (images, crops) if p is not None]
    if not parts:
        return None, None
    vcfg = model.config.vision
    hidden = vision_hidden(model.llava, torch.cat(parts), vcfg.feature_layer)
    projector = model.llava.model.multi_modal_projector
    image_feats = crop_cls = None
    n_images = 0 if images is None else len(images)
    if images is not None:
        patches = hidden[:n_images]
        image_feats = projector(patches[:, 1:] if vcfg.select_strategy == "default" else patches)
    if crops is not None:
        crop_cls = projector(hidden[n_images:, 0])
    return image_feats, crop_cls


def _fill(embeds: torch.Tensor, slots: torch.Tensor, tokens: torch.Tensor | None, *, what: str
          ) -> torch.Tensor:
    """``tokens`` into the ``slots`` of one row, in order (as ``embed_inputs`` scatters)."""
    count, given = int(slots.sum()), 0 if tokens is None else tokens.shape[0]
    if count != given:
        raise ValueError(f"{count} {what} slot(s) in the sequence but {given} {what} "
                         "token(s) were given")
    if tokens is None:
        return embeds
    return embeds.masked_scatter(slots.unsqueeze(-1), tokens.to(embeds.dtype))
