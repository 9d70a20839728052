"""``QueryMeldDecoder.instances``: MaskDINO's instance inference over (query, text) pairs.

On the synthetic multi-task scenes the meld's stuff masks were mostly right while each
query's best text was another stuff class; scoring one (query, best text) per query then gave
every good mask a wrong label (mask AP 4.3). Every pair competes instead, scored by class
probability times mask score."""

from __future__ import annotations

import pytest
import torch

from segllm.config import SegLLMConfig
from segllm.modeling.decoders import build_decoder
from segllm.modeling.decoders.query.meld import CONDITIONAL, LEARNABLE, MeldOutputs
from segllm.modeling.decoders.query.transformer_decoder import Predictions


def stripe(x0: int, x1: int) -> torch.Tensor:
    """16 x 16 mask logits: +10 on columns x0:x1, else -10 (at 64 px: columns 4 x0 : 4 x1)."""
    logits = torch.full((16, 16), -10.0)
    logits[:, x0:x1] = 10.0
    return logits


def test_a_query_answers_every_text_it_scores_high_with_its_mask():
    decoder = build_decoder(SegLLMConfig.from_name("querymeld-tiny", mask_aware_decoding=False))
    probs = torch.tensor([[0.6, 0.7, 0.01],    # q0: learnable, its mask is "sky" but "grass" scores higher
                          [0.02, 0.03, 0.9],   # q1: conditional, "circle"
                          [0.03, 0.04, 0.05]])  # q2: nothing (its best text: "circle")
    outputs = MeldOutputs(
        final=Predictions(logits=torch.logit(probs)[None], boxes=torch.full((1, 3, 4), 0.5),
                          masks=torch.stack([stripe(0, 8), stripe(8, 12), torch.full((16, 16), -10.0)])[None]),
        query_kinds=torch.tensor([LEARNABLE, CONDITIONAL, LEARNABLE]))
    found = decoder.instances(outputs, (64, 64), (64, 64), top_k=3)
    # q0 answers both its texts (before: only "grass", its best, so a right sky mask was lost)
    assert [(i.text_index, i.query_kind) for i in found] == [(2, CONDITIONAL), (1, LEARNABLE),
                                                             (0, LEARNABLE)]
    assert torch.equal(found[1].mask, found[2].mask) and found[2].mask[:, :32].all()
    assert not found[2].mask[:, 32:].any()
    # scores: class probability x the mean mask probability inside the mask, best first
    inside = torch.sigmoid(decoder.to_original_size(stripe(0, 8)[None], (64, 64), (64, 64)))[0]
    assert found[2].score == pytest.approx(0.6 * float(inside[:, :32].mean()), rel=1e-5)
    assert [i.score for i in found] == sorted((i.score for i in found), reverse=True)
