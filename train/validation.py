"""Validation during training: per-round cIoU on a held-out JSONL.

Teacher-forced, with ground-truth references (the earlier rounds' masks fed back are the
annotated ones): one forward per batch, no generation, so it is cheap enough to run every few
hundred steps. The i-th [SEG] of a conversation pairs with its i-th target, as in training.
Intersections, unions and cIoU come from ``segllm.eval.mask_metrics`` (LISA's definitions).
The full benchmark (the model's own masks fed back, generated answers) is ``segllm eval``.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from segllm.batching import collate, encode_sample
from segllm.eval.mask_metrics import ciou, intersection_union_dense

from .data import ConversationSource


@torch.no_grad()
def per_round_ciou(model, source: ConversationSource, batch_size: int, device,
                   dtype: torch.dtype) -> dict[str, float]:
    """``{"val/ciou": all rounds, "val/ciou_round_k": round k, "val/masks": n}``."""
    was_training = model.training
    model.eval()
    inter: dict[int, list[np.ndarray]] = defaultdict(list)
    union: dict[int, list[np.ndarray]] = defaultdict(list)
    threshold = model.decoder.mask_threshold
    pad = model.config.token_ids["pad"]
    for start in range(0, len(source), batch_size):
        samples = [_encode(source, i, model) for i in range(start, min(start + batch_size,
                                                                    len(source)))]
        batch = collate(samples, pad).to(device, dtype)
        out = model(**batch.model_inputs())
        for i, logits in enumerate(out.mask_logits):
            if logits.shape[0] == 0:
                continue
            pred = (logits.float() > threshold).cpu().numpy()
            target = batch.target_masks[i].float().cpu().numpy() > 0.5
            i_, u_ = intersection_union_dense(pred, target)
            scored = (batch.target_weights[i] > 0).tolist()  # a filled box is not a mask to score
            for r, a, b, keep in zip(out.mask_rounds[i].tolist(), i_, u_, scored, strict=True):
                if not keep:
                    continue
                inter[r].append(np.atleast_1d(a))
                union[r].append(np.atleast_1d(b))
    model.train(was_training)
    rounds = sorted(inter)
    metrics = {f"val/ciou_round_{r}": ciou(np.concatenate(inter[r]), np.concatenate(union[r]))
               for r in rounds}
    all_i = np.concatenate([np.concatenate(inter[r]) for r in rounds]) if rounds else np.zeros(0)
    all_u = np.concatenate([np.concatenate(union[r]) for r in rounds]) if rounds else np.zeros(0)
    metrics["val/ciou"] = ciou(all_i, all_u)
    metrics["val/masks"] = int(len(all_i))
    return metrics


def _encode(source, index: int, model):
    """Record ``index`` of ``source`` encoded, with its reference frames (video records)."""
    record, image = source.load(index)
    return encode_sample(record, image, model.tokenizer, model.config,
                         reference_frames=source.load_reference_frames(record))
