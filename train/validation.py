"""Validation during training: per-round and per-round-type cIoU on a held-out JSONL.

Teacher-forced, with ground-truth references (the earlier rounds' masks fed back are the
annotated ones): one forward per batch, no generation, so it is cheap enough to run every few
hundred steps. The i-th [SEG] of a conversation pairs with its i-th target, as in training.
Intersections, unions and cIoU come from ``segllm.eval.mask_metrics`` (LISA's definitions).
The full benchmark (the model's own masks fed back, generated answers) is ``segllm eval``.

Because the answer is given, these figures measure the mask paths alone (the ``[SEG]`` state,
the mask-encoder tokens, the referenced masks into the decoder), apart from whether the model
would name the right shape: what a retrained ablation of a mask path needs. For a saved model:
``python -m segllm.train.validation --model DIR --data FILE.jsonl [--limit N]`` prints them.
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
    """``{"val/ciou": all rounds, "val/ciou_round_k": round k, "val/ciou_type_T": rounds of
    type T (records that name their rounds' types), "val/masks": n}``."""
    was_training = model.training
    model.eval()
    inter: dict[int, list[np.ndarray]] = defaultdict(list)
    union: dict[int, list[np.ndarray]] = defaultdict(list)
    by_type: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    threshold = model.decoder.mask_threshold
    pad = model.config.token_ids["pad"]
    for start in range(0, len(source), batch_size):
        indices = range(start, min(start + batch_size, len(source)))
        samples = [_encode(source, i, model) for i in indices]
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
                kind = source.records[indices[i]]["rounds"][r].get("type")
                if kind:
                    by_type[kind].append((np.atleast_1d(a), np.atleast_1d(b)))
    model.train(was_training)
    rounds = sorted(inter)
    metrics = {f"val/ciou_round_{r}": ciou(np.concatenate(inter[r]), np.concatenate(union[r]))
               for r in rounds}
    all_i = np.concatenate([np.concatenate(inter[r]) for r in rounds]) if rounds else np.zeros(0)
    all_u = np.concatenate([np.concatenate(union[r]) for r in rounds]) if rounds else np.zeros(0)
    metrics["val/ciou"] = ciou(all_i, all_u)
    for kind, pairs in sorted(by_type.items()):
        metrics[f"val/ciou_type_{kind}"] = ciou(np.concatenate([a for a, _ in pairs]),
                                                np.concatenate([b for _, b in pairs]))
    metrics["val/masks"] = int(len(all_i))
    return metrics


def _encode(source, index: int, model):
    """Record ``index`` of ``source`` encoded, with its reference frames (video records)."""
    record, image = source.load(index)
    return encode_sample(record, image, model.tokenizer, model.config,
                         reference_frames=source.load_reference_frames(record))


def main(argv: list[str] | None = None) -> int:
    """Teacher-forced cIoU of a saved model on a conversation file, as JSON."""
    import argparse
    import json
    from dataclasses import replace

    from segllm.modeling.model import SegLLMModel

    from .args import SourceArgs

    parser = argparse.ArgumentParser(prog="python -m segllm.train.validation",
                                     description=main.__doc__)
    parser.add_argument("--model", required=True, help="a folder save_pretrained wrote")
    parser.add_argument("--data", required=True, help="MRSeg conversations (JSONL)")
    parser.add_argument("--images", default=None, help="image root (default: the file's folder)")
    parser.add_argument("--limit", type=int, default=0, help="the first N conversations")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    source = ConversationSource.from_args(SourceArgs(path=args.data, image_root=args.images))
    if args.limit:
        source = replace(source, records=source.records[:args.limit])
    model = SegLLMModel.from_pretrained(args.model)
    metrics = per_round_ciou(model, source, args.batch_size, torch.device("cpu"), torch.float32)
    text = json.dumps({"model": args.model, "data": args.data, "conversations": len(source),
                       **metrics}, indent=2)
    print(text)
    if args.output:
        from segllm.files import write_text_atomic

        write_text_atomic(args.output, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
