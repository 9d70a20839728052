"""Do the image tokens carry their patch's words? A probe for models trained on the synthetic
scenes with the image tokens' word loss (``train/vision_aux.py``).

For every image token whose patch is mostly one shape, the best-scoring word, by the cosine
that word loss uses (the token against the LLM's input embedding of each word, averaged over
the word's sub-word tokens), within each group: the seven colours, the six kinds ("hole" for
the square with a hole), top / bottom and left / right (for shapes outside the middle row or
column; a part takes its whole's place). Against the shape's own words this says whether what
a question needs is in the tokens at all, apart from whether the LLM reads it.

    python -m segllm.eval.image_token_probe MODEL [--scenes 64] [--seed 1] [--output probe.json]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from segllm.batching import build_batch
from segllm.data_builders import synthetic

from .report import print_report

GROUPS = {"colour": sorted(synthetic.COLOURS),
          "kind": ["circle", "triangle", "square", "pentagon", "hexagon", "hole"],
          "row": ["top", "bottom"], "column": ["left", "right"]}
MIN_SHARE = 0.6  # a token counts when this share of its patch is one shape


def word_vectors(model, words: list[str]) -> torch.Tensor:
    """[words, H]: each word's mean normalised input embedding over its sub-word tokens."""
    table = model.language_model.embed_tokens.weight.detach().float()
    rows = []
    for word in words:
        ids = model.tokenizer.encode(" " + word, add_special_tokens=False)
        rows.append(F.normalize(table[ids], dim=-1).mean(0))
    return F.normalize(torch.stack(rows), dim=-1)


@torch.no_grad()
def image_tokens(model, record: dict, image: np.ndarray) -> torch.Tensor:
    """[grid*grid, H]: the image's tokens as the LLM receives them (the projector's output)."""
    batch = build_batch([(record, image)], model.tokenizer, model.config)
    embeds = model.embed_inputs(batch.input_ids, batch.pixel_values)[0]
    return embeds[batch.input_ids[0] == model.config.token_ids["image"]].float()


def shape_words(scene: synthetic.Scene, shape: synthetic.Shape) -> dict[str, str | None]:
    """The words a patch of ``shape`` should score highest, per group."""
    whole = shape if shape.parent is None else scene.shapes[shape.parent]
    place = whole.place(scene.image.shape[0])
    return {"colour": shape.colour, "kind": "hole" if shape.kind == "ring" else shape.kind,
            "row": next((w for w in GROUPS["row"] if w in place), None),
            "column": next((w for w in GROUPS["column"] if w in place), None)}


def probe(model, scenes: int = 64, seed: int = 1,
          tokens_of: Callable[[object, dict, np.ndarray], torch.Tensor] = image_tokens) -> dict:
    """Per group: the share of counted tokens whose best word is right, the count, chance."""
    vectors = {group: word_vectors(model, words) for group, words in GROUPS.items()}
    hits = {group: [0, 0] for group in GROUPS}
    for index in range(scenes):
        record, scene = synthetic.conversation_at(seed, index)
        record = {**record, "rounds": record["rounds"][:1]}
        tokens = F.normalize(tokens_of(model, record, scene.image), dim=-1)
        size = scene.image.shape[0]
        grid = int(round(tokens.shape[0] ** 0.5))
        if grid * grid != tokens.shape[0] or size % grid:
            raise ValueError(f"{tokens.shape[0]} image tokens are not a square grid over {size} px")
        owner = np.full((size, size), -1)
        for k in sorted(range(len(scene.shapes)), key=lambda k: -int(scene.shapes[k].mask.sum())):
            owner[scene.shapes[k].mask] = k  # larger first: a part keeps its own pixels
        cell = size // grid
        for t in range(tokens.shape[0]):
            r, c = divmod(t, grid)
            values, counts = np.unique(owner[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell],
                                       return_counts=True)
            k = int(values[counts.argmax()])
            if k < 0 or counts.max() < MIN_SHARE * cell * cell:
                continue
            for group, want in shape_words(scene, scene.shapes[k]).items():
                if want is None:
                    continue
                best = GROUPS[group][int((vectors[group] @ tokens[t]).argmax())]
                hits[group][0] += best == want
                hits[group][1] += 1
    return {group: {"right": right / max(1, n), "tokens": n, "chance": 1 / len(GROUPS[group])}
            for group, (right, n) in hits.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segllm.eval.image_token_probe",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a model folder (SegLLMModel.from_pretrained)")
    parser.add_argument("--scenes", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1, help="synthetic seed of the scenes")
    parser.add_argument("--output", help="also write the report here (JSON)")
    args = parser.parse_args(argv)
    from segllm.modeling.model import SegLLMModel

    try:
        model = SegLLMModel.from_pretrained(args.model).eval()
    except (FileNotFoundError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_report(probe(model, args.scenes, args.seed), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
