"""Training data: JSONL sources, a seeded mixture over them, and per-step micro-batches.

The sample order is a pure function of (seed, position): position ``p`` of the global stream
maps to (source, record) through :class:`MixtureSampler`. A run that resumes at optimizer
step ``s`` starts at position ``s * global_batch`` and sees exactly the samples the
uninterrupted run would have seen, whatever the number of DataLoader workers.

Optimizer step ``s`` consumes global positions ``[s * G, (s + 1) * G)`` with
``G = micro_batch * accumulation * world``; micro-step ``m`` of process ``r`` takes the
``micro_batch`` positions starting at ``s * G + (m * world + r) * micro_batch``. So one process
with accumulation ``k`` and ``k`` processes without accumulation see the same global batch.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from segllm.batching import EncodedSample, SegBatch, collate, encode_sample, sequence_length
from segllm.config import SegLLMConfig
from segllm.grounding import gcg_to_conversation
from segllm.images import load_image
from segllm.records import read_jsonl, record_kind

from .args import DataArgs, SourceArgs
from .augment import AugmentArgs, augment

BLOCK = 4096  # positions drawn per block of the mixture stream


@dataclass
class ConversationSource:
    """The records of one JSONL file and the folder its image paths are relative to."""

    name: str
    records: list[dict]
    image_root: Path
    weight: float
    augment: AugmentArgs = field(default_factory=AugmentArgs)  # off unless the recipe says

    @classmethod
    def from_args(cls, args: SourceArgs, validate: bool = True) -> ConversationSource:
        """MRSeg conversations, or GCG records (each becomes a one-round grounded caption)."""
        path = Path(args.path)
        records = []
        for line, record in enumerate(read_jsonl(path, validate=validate), start=1):
            kind = record_kind(record)
            if kind == "gcg":
                record = gcg_to_conversation(record)
            elif kind != "conversation":
                raise ValueError(f"{path}: record {line} is a {kind} record; training takes "
                                 "MRSeg conversations and GCG records")
            records.append(record)
        if not records:
            raise ValueError(f"{path}: no records")
        root = Path(args.image_root) if args.image_root else path.parent
        if args.augment.enabled and any("reference_frames" in r for r in records):
            raise ValueError(f"{path}: augmentation transforms the image but not a video "
                             "record's reference_frames; turn augment off for this source")
        return cls(name=args.name or path.stem, records=records, image_root=root,
                   weight=args.weight, augment=args.augment)

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> tuple[dict, np.ndarray]:
        """Record ``index`` and its image as an (H, W, 3) uint8 array."""
        record = self.records[index]
        # the stored pixels: the data set's masks and sizes are on them, whatever EXIF says
        image = load_image(self.image_root / record["image"], orientation="stored")
        return record, np.asarray(image)

    def load_reference_frames(self, record: dict) -> list[np.ndarray]:
        """The images of a video record's ``reference_frames`` (none for an image record)."""
        return [np.asarray(load_image(self.image_root / path, orientation="stored"))
                for path in record.get("reference_frames", [])]


def mixture_probabilities(sizes: Sequence[int], weights: Sequence[float], mixing: str) -> np.ndarray:
    """Probability of drawing each source: ``weight`` ("ratio") or ``weight * size`` ("size")."""
    w = np.asarray(weights, dtype=np.float64)
    if mixing == "size":
        w = w * np.asarray(sizes, dtype=np.float64)
    elif mixing != "ratio":
        raise ValueError(f"unknown mixing {mixing!r}; known: ['ratio', 'size']")
    return w / w.sum()


class MixtureSampler:
    """Position -> (source, record index), deterministic in the seed.

    Each position draws its source with the mixture probabilities; the k-th draw of a source
    takes element ``k mod n`` of that source's permutation for epoch ``k // n`` (a fresh
    permutation per epoch), so every record of a source is seen once before any repeats.
    """

    def __init__(self, sizes: Sequence[int], probabilities: Sequence[float], seed: int):
        self.sizes = list(sizes)
        self.probabilities = np.asarray(probabilities, dtype=np.float64)
        self.seed = seed
        self._blocks: list[np.ndarray] = []  # source of each position, per block
        self._counts: list[np.ndarray] = []  # draws of each source before each block
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def _ensure_block(self, block: int) -> None:
        while len(self._blocks) <= block:
            b = len(self._blocks)
            rng = np.random.default_rng([self.seed, 1, b])
            choice = rng.choice(len(self.sizes), size=BLOCK, p=self.probabilities)
            before = np.zeros(len(self.sizes), dtype=np.int64) if b == 0 else \
                self._counts[-1] + np.bincount(self._blocks[-1], minlength=len(self.sizes))
            self._blocks.append(choice)
            self._counts.append(before)

    def _permutation(self, source: int, epoch: int) -> np.ndarray:
        key = (source, epoch)
        if key not in self._perms:
            rng = np.random.default_rng([self.seed, 2, source, epoch])
            self._perms[key] = rng.permutation(self.sizes[source])
        return self._perms[key]

    def __getitem__(self, position: int) -> tuple[int, int]:
        block, offset = divmod(position, BLOCK)
        self._ensure_block(block)
        choices = self._blocks[block]
        source = int(choices[offset])
        draw = int(self._counts[block][source]) + int(np.count_nonzero(choices[:offset] == source))
        epoch, k = divmod(draw, self.sizes[source])
        return source, int(self._permutation(source, epoch)[k])


def micro_batch_positions(step: int, micro_step: int, rank: int, world: int, micro_batch: int,
                          accumulation: int) -> list[int]:
    """Global stream positions of one micro-batch (see the module docstring)."""
    global_batch = micro_batch * accumulation * world
    start = step * global_batch + (micro_step * world + rank) * micro_batch
    return list(range(start, start + micro_batch))


class MixedConversations:
    """Encoded samples at global positions of the mixture stream."""

    def __init__(self, sources: list[ConversationSource], sampler: MixtureSampler, tokenizer,
                 model_config: SegLLMConfig, seed: int = 0):
        self.sources = sources
        self.sampler = sampler
        self.tokenizer = tokenizer
        self.model_config = model_config
        self.seed = seed
        self._lengths: dict[int, int] = {}  # position -> tokens, for length bucketing

    @classmethod
    def from_args(cls, args: DataArgs, seed: int, tokenizer,
                  model_config: SegLLMConfig) -> MixedConversations:
        sources = [ConversationSource.from_args(s, args.validate_records) for s in args.sources]
        probs = mixture_probabilities([len(s) for s in sources], [s.weight for s in sources],
                                      args.mixing)
        return cls(sources, MixtureSampler([len(s) for s in sources], probs, seed), tokenizer,
                   model_config, seed)

    def load(self, position: int) -> tuple[dict, np.ndarray]:
        """The record and image at a stream position, augmented as its source says; the
        draws depend only on (seed, position), so a resumed run repeats them."""
        source, index = self.sampler[position]
        record, image = self.sources[source].load(index)
        rng = random.Random(f"augment:{self.seed}:{position}")
        return augment(record, image, self.sources[source].augment, rng)

    def length(self, position: int) -> int:
        """Tokens of the sequence at a stream position, from its record's text (cached);
        augmentation can change it by a word or two, which bucketing ignores."""
        if position not in self._lengths:
            source, index = self.sampler[position]
            self._lengths[position] = sequence_length(self.sources[source].records[index],
                                                      self.tokenizer, self.model_config)
        return self._lengths[position]

    def encode(self, position: int) -> EncodedSample:
        record, image = self.load(position)
        frames = self.sources[self.sampler[position][0]].load_reference_frames(record)
        return encode_sample(record, image, self.tokenizer, self.model_config,
                             reference_frames=frames)


class StepBatches(torch.utils.data.Dataset):
    """Item ``i`` is the ``i``-th micro-batch of this process from optimizer step ``first_step``.

    Map-style and stateless, so DataLoader workers cannot change the order and a resumed run
    builds it with ``first_step`` = the checkpoint's step.
    """

    def __init__(self, data: MixedConversations, first_step: int, last_step: int, rank: int,
                 world: int, micro_batch: int, accumulation: int, bucket_steps: int = 0):
        self.data = data
        self.first_step = first_step
        self.num_items = max(0, last_step - first_step) * accumulation
        self.rank, self.world = rank, world
        self.micro_batch, self.accumulation = micro_batch, accumulation
        if bucket_steps < 0:
            raise ValueError(f"data.bucket_steps must be >= 0, got {bucket_steps}")
        self.bucket_steps = bucket_steps

    def __len__(self) -> int:
        return self.num_items

    def __getitem__(self, item: int) -> list[EncodedSample]:
        step, micro = divmod(item, self.accumulation)
        if self.bucket_steps:
            positions = bucketed_positions(self.data.length, self.first_step + step, micro,
                                           self.rank, self.world, self.micro_batch,
                                           self.accumulation, self.bucket_steps,
                                           self.data.seed)
        else:
            positions = micro_batch_positions(self.first_step + step, micro, self.rank,
                                              self.world, self.micro_batch, self.accumulation)
        return [self.data.encode(p) for p in positions]


def bucketed_positions(length, step: int, micro_step: int, rank: int, world: int,
                       micro_batch: int, accumulation: int, bucket_steps: int,
                       seed: int) -> list[int]:
    """Positions of one micro-batch under length bucketing (``data.bucket_steps``).

    The positions of each window of ``bucket_steps`` optimizer steps (the same set the plain
    order gives those steps) are sorted by sequence length (``length(position)``) and cut into
    that window's micro-batches, which then go out in an order shuffled with (seed, window):
    sequences of a micro-batch have similar lengths, so little of it is padding, and every
    position is still seen once. A pure function of its arguments, so resuming at any step
    and any number of DataLoader workers give the same batches; what changes against the plain
    order is which samples share a micro-batch and a step, within the window.
    """
    global_batch = micro_batch * accumulation * world
    window, offset = divmod(step, bucket_steps)
    first = window * bucket_steps * global_batch
    ordered = sorted(range(first, first + bucket_steps * global_batch),
                     key=lambda p: (length(p), p))
    groups = len(ordered) // micro_batch
    order = np.random.default_rng([seed, 3, window]).permutation(groups)
    group = int(order[(offset * accumulation + micro_step) * world + rank])
    return ordered[group * micro_batch:(group + 1) * micro_batch]


def batch_loader(batches: StepBatches, pad_id: int, num_workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader over micro-batches that collates with :func:`segllm.batching.collate`."""
    return torch.utils.data.DataLoader(
        batches, batch_size=None, shuffle=False, num_workers=num_workers,
        collate_fn=functools.partial(collate, pad_id=pad_id),
        # its own generator: creating the iterator must not draw from the global torch RNG,
        # or a resumed run's dropout stream would be shifted by one draw
        generator=torch.Generator())


def read_validation(path: str, image_root: str | None, max_samples: int,
                    validate: bool = True) -> ConversationSource:
    """The held-out conversations (the first ``max_samples``)."""
    source = ConversationSource.from_args(SourceArgs(path=path, image_root=image_root), validate)
    source.records = source.records[:max_samples]
    return source


def count_tokens(batch: SegBatch) -> int:
    """Non-padding tokens of a batch (for tokens/s)."""
    return int(batch.attention_mask.sum())


def source_counts(sampler: MixtureSampler, positions: range) -> list[int]:
    """How many of ``positions`` each source supplies (for checks and logs)."""
    counts = [0] * len(sampler.sizes)
    for p in positions:
        counts[sampler[p][0]] += 1
    return counts


__all__ = [
    "ConversationSource", "MixtureSampler", "MixedConversations", "StepBatches", "batch_loader",
    "bucketed_positions", "micro_batch_positions", "mixture_probabilities", "read_validation", "count_tokens",
    "source_counts",
]
