"""An auxiliary loss that teaches the image tokens the words for what each patch shows.

Why: trained end to end from scratch, the vision tower learns only through the language loss,
which reaches it through the LLM's attention; the shipped small model names a shape's colour
far more often than its kind, and "no such shape" answers miss shapes that are there. Grounded
captions already list every object of a scene with its mask, so every image token can be told
directly which words describe its patch.

How (no parameters of its own, so checkpoints, resume and export are unchanged): for each
image token (the projector's output, as the LLM receives it) the logits over a small set of
words are ``scale * cos(token, embedding(word))`` with the LLM's own input-embedding rows; the
target is the patch's mix of the words of the objects it covers, weighted by the share of its
pixels each object fills ("a blue square with a hole" -> blue, square, hole; uncovered pixels
-> "background"). Soft cross-entropy, averaged over the image tokens of samples that have
labels. So a token comes to sit near the words the LLM will write for it.

Labels come from GCG records (``phrases`` with ``rle``), indexed by image; a training sample
finds its scene through its own record's image path. Sources with geometric augmentation are
refused: the labels would no longer match the pixels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from segllm.batching import SegBatch
from segllm.masks import decode_rle
from segllm.records import read_jsonl

STOP_WORDS = frozenset({"a", "an", "the", "with", "of", "in", "on", "at", "and"})
BACKGROUND = "background"


@dataclass
class VisionAuxArgs:
    """``vision_aux`` in a training YAML; off unless ``labels`` is set and ``weight`` > 0."""

    labels: str | None = None  # GCG JSONL whose phrases (with masks) describe every object
    image_root: str | None = None  # default: the folder of the labels file
    weight: float = 0.0  # the loss's weight beside CE and the mask loss
    scale: float = 10.0  # cosine-logit temperature (CLIP-style fixed scale)

    @property
    def enabled(self) -> bool:
        return bool(self.labels) and self.weight > 0


def phrase_words(text: str) -> list[str]:
    """The content words of a phrase: 'A blue square with a hole' -> ['blue', 'square', 'hole']."""
    return [w for w in re.findall(r"[a-z]+", text.lower()) if w not in STOP_WORDS]


class VisionAuxLoss:
    """Per-patch word targets for the training samples whose images have labels."""

    def __init__(self, scenes: dict[Path, list[tuple[list[str], dict]]],
                 sample_images: dict[str, Path], tokenizer, grid: int, args: VisionAuxArgs):
        self.scenes = scenes
        self.sample_images = sample_images
        self.grid = grid
        self.args = args
        words = sorted({w for objs in scenes.values() for ws, _ in objs for w in ws})
        self.words = [BACKGROUND, *words]
        self.word_tokens = {w: tokenizer.encode(" " + w, add_special_tokens=False)
                            for w in self.words}
        self.vocab = sorted({t for ids in self.word_tokens.values() for t in ids})
        column = {t: i for i, t in enumerate(self.vocab)}
        # words x vocab: each word spreads its unit of probability over its tokens
        self.word_to_vocab = torch.zeros(len(self.words), len(self.vocab))
        for i, w in enumerate(self.words):
            for t in self.word_tokens[w]:
                self.word_to_vocab[i, column[t]] += 1.0 / len(self.word_tokens[w])
        self._cache: dict[Path, torch.Tensor] = {}

    @classmethod
    def build(cls, args: VisionAuxArgs, sources, tokenizer, num_image_tokens: int) -> VisionAuxLoss:
        """Index the labels file and every training record's image; check the image grid."""
        grid = int(round(num_image_tokens ** 0.5))
        if grid * grid != num_image_tokens:
            raise ValueError(f"vision_aux: {num_image_tokens} image tokens are not a square grid")
        for source in sources:
            if source.augment.enabled and (source.augment.hflip or
                                           tuple(source.augment.scale) != (1.0, 1.0)):
                raise ValueError(f"vision_aux: source {source.name!r} flips or rescales its "
                                 "images, so the labels would not match the pixels")
        path = Path(args.labels)
        root = Path(args.image_root) if args.image_root else path.parent
        scenes: dict[Path, list[tuple[list[str], dict]]] = {}
        for line, record in enumerate(read_jsonl(path), start=1):
            if "phrases" not in record:
                raise ValueError(f"vision_aux: {path} record {line} has no 'phrases' "
                                 "(labels come from GCG records)")
            objects = [(phrase_words(p["text"]), p["rle"]) for p in record["phrases"]
                       if p.get("rle") is not None]
            scenes[(root / record["image"]).resolve()] = objects
        sample_images = {str(r.get("id")): (s.image_root / r["image"]).resolve()
                         for s in sources for r in s.records}
        return cls(scenes, sample_images, tokenizer, grid, args)

    def patch_targets(self, sample_id: str) -> torch.Tensor | None:
        """[grid*grid, words] share of each patch per word, or None without labels."""
        image = self.sample_images.get(sample_id)
        if image is None or image not in self.scenes:
            return None
        if image not in self._cache:
            self._cache[image] = self._rasterise(self.scenes[image])
        return self._cache[image]

    def _rasterise(self, objects: list[tuple[list[str], dict]]) -> torch.Tensor:
        masks = [decode_rle(rle).astype(bool) for _, rle in objects]
        h, w = masks[0].shape
        owner = np.full((h, w), -1)
        # larger objects first, so a part inside another keeps its own pixels
        for k in sorted(range(len(masks)), key=lambda k: -int(masks[k].sum())):
            owner[masks[k]] = k
        index = {word: i for i, word in enumerate(self.words)}
        shares = torch.zeros(len(self.words), h, w)
        shares[0] = torch.from_numpy(owner == -1).float()
        for k, (words, _) in enumerate(objects):
            here = torch.from_numpy(owner == k).float()
            for word in words:
                shares[index[word]] += here / len(words)
        side = max(h, w)  # the CLIP input is padded to a square (background) and resized
        square = torch.zeros(len(self.words), side, side)
        square[0] = 1.0
        top, left = (side - h) // 2, (side - w) // 2
        square[:, top:top + h, left:left + w] = shares
        pooled = F.adaptive_avg_pool2d(square[None], (self.grid, self.grid))[0]
        return pooled.flatten(1).T.contiguous()

    def __call__(self, model, batch: SegBatch, embeds: torch.Tensor) -> torch.Tensor:
        """The loss over this batch's labelled samples (zero when none has labels, so every
        step logs the same keys on every process)."""
        image_id = model.config.token_ids["image"]
        rows, targets = [], []
        for i, sample_id in enumerate(batch.sample_ids):
            target = self.patch_targets(sample_id)
            slots = batch.input_ids[i] == image_id
            if target is None or int(slots.sum()) != target.shape[0]:
                continue
            rows.append(embeds[i][slots])
            targets.append(target)
        if not rows:
            return embeds.new_zeros((), dtype=torch.float32)
        tokens = torch.cat(rows).float()
        table = model.language_model.embed_tokens.weight[self.vocab].float()
        logits = self.args.scale * F.normalize(tokens, dim=-1) @ F.normalize(table, dim=-1).T
        want = torch.cat(targets).to(logits.device) @ self.word_to_vocab.to(logits.device)
        return -(want * logits.log_softmax(dim=-1)).sum(dim=-1).mean()
