"""Mixture sampling, the split of a global batch over processes, and the lr schedule."""

from __future__ import annotations

import numpy as np
import pytest

from segllm.train.args import OptimArgs
from segllm.train.data import (
    MixtureSampler,
    micro_batch_positions,
    mixture_probabilities,
    source_counts,
)
from segllm.train.optim import lr_multiplier


def test_lisa_ratio_mixing_draws_9_3_3_1():
    probs = mixture_probabilities([1000, 50, 400, 20], [9, 3, 3, 1], "ratio")
    sampler = MixtureSampler([1000, 50, 400, 20], probs, seed=0)
    counts = np.array(source_counts(sampler, range(16_000)))
    assert np.allclose(counts / counts.sum(), [9 / 16, 3 / 16, 3 / 16, 1 / 16], atol=0.01)


def test_size_mixing_is_proportional_to_records():
    assert np.allclose(mixture_probabilities([300, 100], [1, 1], "size"), [0.75, 0.25])


def test_sampler_is_deterministic_and_covers_each_epoch():
    a = MixtureSampler([7, 5], [0.5, 0.5], seed=3)
    b = MixtureSampler([7, 5], [0.5, 0.5], seed=3)
    late = [b[p] for p in range(9000, 9010)]  # random access without the earlier positions
    assert [a[p] for p in range(9010)][9000:] == late
    draws = [a[p] for p in range(200)]
    first_epoch = [i for s, i in draws if s == 0][:7]
    assert sorted(first_epoch) == list(range(7))  # every record once before any repeats
    assert [a[p] for p in range(50)] != [MixtureSampler([7, 5], [0.5, 0.5], 4)[p]
                                         for p in range(50)]


def test_one_process_with_accumulation_sees_the_global_batch_of_two_processes():
    one = sorted(p for m in range(2) for p in micro_batch_positions(3, m, 0, 1, 2, 2))
    two = sorted(p for r in range(2) for p in micro_batch_positions(3, 0, r, 2, 2, 1))
    assert one == two == list(range(12, 16))


def test_warmup_then_cosine_and_linear():
    cos = OptimArgs(lr=1.0, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_multiplier(s, cos, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_multiplier(9, cos, 14) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down
    assert lr_multiplier(14, cos, 14) == pytest.approx(0.1)
    lin = OptimArgs(lr=1.0, warmup_steps=0, schedule="linear")
    assert lr_multiplier(5, lin, 10) == pytest.approx(0.5)
