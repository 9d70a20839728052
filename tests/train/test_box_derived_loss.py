"""Box-derived targets (Visual Genome's filled rectangles) get no mask loss: the weight goes
through the batch (``SegBatch.target_weights``), not through special cases in the loss."""

from __future__ import annotations

import torch

from segllm.batching import build_batch
from segllm.train.losses import mask_losses
from segllm.train.objective import compute_objective
from tests.conftest import make_conversation


def test_zero_weight_masks_add_no_loss_and_no_gradient():
    logits = torch.randn(2, 8, 8, requires_grad=True)
    targets = torch.zeros(2, 8, 8)
    targets[1, 2:6, 2:6] = 1  # a "rectangle"
    bce, dice, n = mask_losses([logits], [targets], [torch.tensor([1.0, 0.0])])
    only_first = mask_losses([logits[:1]], [targets[:1]])
    assert n == 1 and torch.allclose(bce, only_first[0]) and torch.allclose(dice, only_first[1])
    (bce + dice).backward()
    assert logits.grad[1].abs().sum() == 0 and logits.grad[0].abs().sum() > 0
    unweighted = mask_losses([logits], [targets])
    assert unweighted[2] == 2 and not torch.allclose(unweighted[0], bce)


def test_box_derived_targets_leave_the_mask_loss(tiny_model, tiny_tokenizer):
    record, image = make_conversation("vg")
    batch = build_batch([(record, image)], tiny_tokenizer, tiny_model.config)
    assert batch.target_weights[0].tolist() == [1.0, 1.0, 1.0, 1.0]
    for rnd in record["rounds"][1:]:
        for target in rnd["targets"]:
            target["box_derived"] = True
    boxed = build_batch([(record, image)], tiny_tokenizer, tiny_model.config)
    assert boxed.target_weights[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    torch.manual_seed(0)
    out = compute_objective(tiny_model, boxed)
    assert out.num_masks == 1
    first = out.output.mask_logits[0][:1]
    expected = mask_losses([first], [boxed.target_masks[0][:1]])
    assert torch.allclose(out.bce_loss, expected[0]) and torch.allclose(out.dice_loss, expected[1])


def test_validation_does_not_score_box_derived_masks(tiny_model, tmp_path):
    from segllm.data_builders.synthetic import write_synthetic
    from segllm.train.args import SourceArgs
    from segllm.train.data import ConversationSource
    from segllm.train.validation import per_round_ciou

    write_synthetic(tmp_path, num=3, seed=0, image_size=48, max_rounds=2, gcg=False)
    source = ConversationSource.from_args(SourceArgs(path=str(tmp_path / "synthetic.jsonl")))
    scored = per_round_ciou(tiny_model, source, 2, "cpu", torch.float32)["val/masks"]
    first_round_masks = sum(len(r["rounds"][0]["targets"]) for r in source.records)
    for record in source.records:
        for rnd in record["rounds"][1:]:
            for target in rnd["targets"]:
                target["box_derived"] = True
    assert per_round_ciou(tiny_model, source, 2, "cpu", torch.float32)["val/masks"] == first_round_masks < scored
