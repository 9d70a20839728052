"""Length bucketing (``data.bucket_steps``): micro-batches of similar lengths, every sample of a
window seen once, the same batches however the run is split or resumed."""

from __future__ import annotations

import numpy as np
import pytest

from segllm.train.data import bucketed_positions, micro_batch_positions

LENGTHS = np.random.default_rng(0).integers(40, 400, size=4096)


def length(position: int) -> int:
    return int(LENGTHS[position])


def padding(batches: list[list[int]]) -> float:
    slots = sum(len(b) * max(length(p) for p in b) for b in batches)
    return 1 - sum(length(p) for b in batches for p in b) / slots


def window_batches(window: int, bucket_steps: int, world: int, accumulation: int,
                   micro_batch: int = 4) -> list[list[int]]:
    return [bucketed_positions(length, step, micro, rank, world, micro_batch, accumulation,
                               bucket_steps, seed=0)
            for step in range(window * bucket_steps, (window + 1) * bucket_steps)
            for micro in range(accumulation) for rank in range(world)]


@pytest.mark.parametrize("world, accumulation", [(1, 1), (2, 2)])
def test_a_window_holds_the_plain_positions_once_in_length_sorted_batches(world, accumulation):
    bucketed = window_batches(1, 8, world, accumulation)
    plain = [micro_batch_positions(step, micro, rank, world, 4, accumulation)
             for step in range(8, 16) for micro in range(accumulation) for rank in range(world)]
    assert sorted(p for b in bucketed for p in b) == sorted(p for b in plain for p in b)
    assert padding(bucketed) < 0.15 < 0.25 < padding(plain)
    first_lengths = sorted(length(p) for p in bucketed[0])
    # a batch is a run of the window's sorted lengths: nothing of the window lies inside it
    others = [length(p) for b in bucketed[1:] for p in b]
    assert not any(first_lengths[0] < x < first_lengths[-1] for x in others)


def test_batches_are_a_function_of_the_step_so_resuming_repeats_them():
    again = [bucketed_positions(length, 13, 0, 0, 1, 4, 1, 8, seed=0) for _ in range(2)]
    assert again[0] == again[1] == window_batches(1, 8, 1, 1)[5]
    # long and short batches alternate in a seeded order, not from short to long
    firsts = [max(length(p) for p in b) for b in window_batches(0, 8, 1, 1)]
    assert firsts != sorted(firsts)
    assert window_batches(0, 8, 1, 1) != [bucketed_positions(length, s, 0, 0, 1, 4, 1, 8, seed=1)
                                          for s in range(8)]


def test_sequence_length_is_the_encoded_length(tmp_path):
    from segllm.batching import encode_sample, sequence_length
    from segllm.config import SegLLMConfig
    from segllm.data_builders.synthetic import generate_conversations
    from segllm.modeling.model import SegLLMModel

    config = SegLLMConfig.from_name("tiny")
    tokenizer = SegLLMModel.from_config(config).tokenizer
    for record, image in generate_conversations(3, seed=0, image_size=48, min_rounds=1,
                                                max_rounds=4):
        encoded = encode_sample(record, image, tokenizer, config)
        assert sequence_length(record, tokenizer, config) == len(encoded.conversation.input_ids)


def test_bucket_steps_must_not_be_negative():
    from segllm.train.data import StepBatches

    with pytest.raises(ValueError, match="data.bucket_steps must be >= 0"):
        StepBatches(None, 0, 4, 0, 1, 2, 1, bucket_steps=-1)
