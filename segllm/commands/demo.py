"""``segllm demo``: the shipped small model, end to end, on bundled synthetic scenes.

    segllm demo                      # multi-round chats + a grounded caption, printed and saved
    segllm demo --scenes 6 --out runs/demo
    segllm demo --serve              # the web demo on the same model

For each scene the model answers the scene's questions in order, feeding its *own* earlier
masks back wherever a question says ``<ref:k>``; every round prints the question, the answer
and the IoU of each mask against the ground truth, and writes the masks and an overlay
(``OUT/scene_N/round_NN/``) plus one picture of the whole conversation (``OUT/scene_N.png``:
prediction beside ground truth, a row a round). Then one scene gets a grounded caption
(``OUT/caption.png``). ``OUT/demo.json`` holds every number printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

import numpy as np

from segllm.masks import mask_iou
from segllm.shipped import SCENES_DIR

CAPTION_TOKENS = 200  # a grounded caption of six shapes with their places runs to about 140 tokens


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model folder (default: the shipped models/segllm-shapes)")
    parser.add_argument("--out", default="runs/demo", help="where masks and pictures go")
    parser.add_argument("--scenes", type=int, default=3,
                        help="how many of the six bundled scenes to talk about")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--serve", action="store_true",
                        help="open the web demo on the model instead (see segllm serve)")
    parser.add_argument("--host", default="127.0.0.1", help="--serve: address to listen on")
    parser.add_argument("--port", type=int, default=7860, help="--serve: port")


def run(args: argparse.Namespace) -> int:
    from segllm.shipped import resolve_model_dir

    try:
        model_dir = resolve_model_dir(args.model)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.serve:
        return _serve(model_dir, args)
    from segllm.pipeline import SegLLMPipeline

    pipeline = SegLLMPipeline.from_pretrained(model_dir, device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_params = sum(p.numel() for p in pipeline.model.parameters())
    print(f"model: {model_dir} ({n_params / 1e6:.1f} M parameters)")
    scenes = _read_jsonl(SCENES_DIR / "scenes.jsonl")[: max(0, args.scenes)]
    report = {"model": str(model_dir), "scenes": []}
    for index, record in enumerate(scenes):
        report["scenes"].append(talk_about_scene(pipeline, record, out, index))
    captions = _read_jsonl(SCENES_DIR / "scenes_gcg.jsonl")
    if captions:
        report["caption"] = caption_scene(pipeline, captions[0], out)
    _print_summary(report)
    (out / "demo.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"outputs: {out}/ (scene_N.png, caption.png, demo.json, per-round masks)")
    return 0


def _serve(model_dir: Path, args: argparse.Namespace) -> int:
    from segllm.demo import app

    parser = argparse.ArgumentParser()
    app.add_arguments(parser)
    serve_args = parser.parse_args(["--model", str(model_dir), "--host", args.host,
                                    "--port", str(args.port), "--device", args.device])
    return app.run(serve_args)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _load_scene_image(record: dict):
    from segllm.images import load_image

    # the scenes' masks annotate the stored pixels, as in evaluation
    return load_image(SCENES_DIR / record["image"], orientation="stored")


def _target_masks(targets: list[dict]) -> list[np.ndarray]:
    from segllm.masks import decode_rle

    return [decode_rle(t["rle"]).astype(bool) for t in targets]


def round_ious(predicted: list[np.ndarray], targets: list[np.ndarray]) -> list[float]:
    """IoU of the i-th mask with the i-th target; a missing or extra mask scores 0."""
    empty = np.zeros_like(targets[0] if targets else predicted[0]) if (targets or predicted) else None
    n = max(len(predicted), len(targets))
    return [mask_iou(predicted[i] if i < len(predicted) else empty,
                 targets[i] if i < len(targets) else empty) for i in range(n)]


def talk_about_scene(pipeline, record: dict, out: Path, index: int) -> dict:
    """Ask every question of a bundled conversation; print and save each round."""
    from segllm.commands.chat import save_round

    image = _load_scene_image(record)
    session = pipeline.start(image, orientation="stored")
    folder = out / f"scene_{index}"
    print(f"\nscene {index} ({record['id']}, {image.width}x{image.height}) -> {folder}/")
    rounds, rows = [], []
    for r, rnd in enumerate(record["rounds"]):
        reply = session.ask(rnd["question"])
        save_round(folder, image, reply)
        targets = _target_masks(rnd["targets"])
        ious = round_ious(reply.masks, targets)
        no_target = not targets
        print(f"  [{r}] {rnd['question']}")
        if no_target:
            verdict = "no mask: right" if not reply.masks else f"{len(reply.masks)} mask(s): wrong"
            print(f"      {reply.text}   ({verdict}; there is no such object)")
        else:
            print(f"      {reply.text}   IoU " + ", ".join(f"{v:.2f}" for v in ious))
        rounds.append({"round": r, "type": rnd["type"], "question": rnd["question"],
                       "answer": reply.text, "ious": ious, "no_target": no_target,
                       "num_masks": len(reply.masks)})
        rows.append((rnd["question"], reply.text, reply.masks, targets))
    _conversation_picture(image, rows).save(out / f"scene_{index}.png")
    return {"id": record["id"], "rounds": rounds}


def caption_scene(pipeline, record: dict, out: Path) -> dict:
    """A grounded caption of one scene: phrases paired in order with their masks."""
    from segllm.eval.gcg import parse_grounded_answer
    from segllm.grounding import GCG_INSTRUCTION
    from segllm.masks import render_overlay
    from segllm.pipeline import GenerationConfig

    image = _load_scene_image(record)
    session = pipeline.start(image, orientation="stored")
    reply = session.ask(GCG_INSTRUCTION, generation=GenerationConfig(max_new_tokens=CAPTION_TOKENS))
    caption, phrases = parse_grounded_answer(reply.text)
    truth = _target_masks(record["phrases"])
    print(f"\ngrounded caption of {record['id']}:\n  {caption}")
    matched = []
    for j, (phrase, mask) in enumerate(zip(phrases, reply.masks, strict=False)):
        best = max(((mask_iou(mask, t), k) for k, t in enumerate(truth)), default=(0.0, -1))
        gt_text = record["phrases"][best[1]]["text"] if best[1] >= 0 else ""
        print(f"  <p>{phrase}</p> -> best ground-truth phrase {gt_text!r}, IoU {best[0]:.2f}")
        matched.append({"phrase": phrase, "iou": best[0], "ground_truth": gt_text, "mask": j})
    labels = [f"{j}: {p}"[:28] for j, p in enumerate(phrases[: len(reply.masks)])]
    labels += [f"{j}" for j in range(len(labels), len(reply.masks))]
    render_overlay(image, reply.masks, labels=labels, min_side=384).save(out / "caption.png")
    return {"id": record["id"], "answer": reply.text, "caption": caption,
            "ground_truth": record["caption"], "phrases": matched}


def _conversation_picture(image, rows):
    """One figure: a row per round, the model's masks beside the ground truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from segllm.masks import render_overlay

    fig, axes = plt.subplots(len(rows), 2, figsize=(7, 3.2 * len(rows)), squeeze=False)
    for r, (question, answer, predicted, targets) in enumerate(rows):
        shown = "".join(ch for ch in answer if ch.isprintable())  # an untrained model's bytes
        left = textwrap.fill(f"[{r}] {question}", 48) + "\n" + textwrap.fill(f"model: {shown}", 48)
        for col, (masks, title) in enumerate(((predicted, left), (targets, "ground truth"))):
            ax = axes[r][col]
            ax.imshow(render_overlay(image, masks))
            ax.set_title(title, fontsize=8, loc="left")
            ax.axis("off")
    fig.tight_layout()
    fig.canvas.draw()
    picture = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return picture


def _print_summary(report: dict) -> None:
    by_round: dict[int, list[float]] = {}
    no_target = [0, 0]
    for scene in report["scenes"]:
        for rnd in scene["rounds"]:
            if rnd["no_target"]:
                no_target[0] += rnd["num_masks"] == 0
                no_target[1] += 1
            else:
                by_round.setdefault(rnd["round"], []).extend(rnd["ious"])
    if by_round:
        print("\nmean IoU by round: " + ", ".join(
            f"{r}: {np.mean(v):.2f}" for r, v in sorted(by_round.items())))
    if no_target[1]:
        print(f"'no such object' rounds answered without a mask: {no_target[0]}/{no_target[1]}")
