"""The query-meld decoder at tiny sizes: the dual-query cross-attention, gradients into both
query kinds, the strategy switch, the query-type statistic, texts as classes, and the whole
SegLLM model with ``decoder: querymeld`` (the HIPIE decoder's checks)."""

from __future__ import annotations

import math

import pytest
import torch

from segllm.batching import build_batch
from segllm.config import SegLLMConfig
from segllm.modeling.decoders import build_decoder
from segllm.modeling.decoders.query import Target
from segllm.modeling.decoders.query.meld import (
    CONDITIONAL,
    LEARNABLE,
    DualQueryCrossAttention,
    MeldDecoder,
    matched_query_kinds,
    query_counts,
    query_type_shares,
)
from segllm.modeling.decoders.querymeld import QueryMeldDecoder
from segllm.modeling.model import SegLLMModel
from segllm.train.objective import compute_objective
from tests.conftest import make_conversation

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPES = [(4, 4), (2, 2), (1, 1)]
DIM = 16


def tiny_meld(strategy: str = "meld", **sizes) -> MeldDecoder:
    torch.manual_seed(0)
    args = {"dim": DIM, "prompt_dim": 8, "mask_dim": DIM, "layers": 2, "ffn_dim": 32,
            "heads": 2, "points": 2, "levels": len(SHAPES), "num_learnable": 3,
            "num_conditional": 5, "query_strategy": strategy, **sizes}
    return MeldDecoder(**args)


def tiny_inputs(n: int = 2, tokens: int = 3):
    torch.manual_seed(1)
    memory = torch.randn(n, sum(h * w for h, w in SHAPES), DIM, requires_grad=True)
    return memory, torch.randn(n, DIM, 8, 8), torch.randn(n, tokens, 8)


def test_dual_query_cross_attention_shapes_and_that_each_kind_reads_the_other():
    torch.manual_seed(0)
    attn = DualQueryCrossAttention(DIM, heads=2)
    tgt, pos = torch.randn(2, 7, DIM), torch.randn(2, 7, DIM)
    out = attn(tgt, pos, num_conditional=4)
    assert out.shape == (2, 7, DIM)
    # a change in a learnable query moves the conditional ones and vice versa
    moved = tgt.clone()
    moved[:, 5] += 1.0
    assert not torch.allclose(attn(moved, pos, 4)[:, :4], out[:, :4])
    moved = tgt.clone()
    moved[:, 0] += 1.0
    assert not torch.allclose(attn(moved, pos, 4)[:, 4:], out[:, 4:])
    # one kind only: nothing to fuse, the queries pass unchanged
    assert torch.equal(attn(tgt, pos, num_conditional=0), tgt)
    assert torch.equal(attn(tgt, pos, num_conditional=7), tgt)


def test_meld_outputs_shapes_and_query_kinds():
    decoder = tiny_meld()
    memory, mask_features, prompts = tiny_inputs()
    out = decoder(memory, SHAPES, mask_features, prompts, spans=[slice(0, 1), slice(1, 3)])
    assert out.final.logits.shape == (2, 8, 2)
    assert out.final.boxes.shape == (2, 8, 4)
    assert out.final.masks.shape == (2, 8, 8, 8)
    assert len(out.layers) == 1 and out.proposals.logits.shape == (2, 5, 2)
    assert out.query_kinds.tolist() == [CONDITIONAL] * 5 + [LEARNABLE] * 3


def test_learnable_and_conditional_queries_each_receive_gradients():
    decoder = tiny_meld()
    memory, mask_features, prompts = tiny_inputs()
    out = decoder(memory, SHAPES, mask_features, prompts)
    out.final.masks[:, :5].sum().backward(retain_graph=True)  # the conditional queries only
    # the learnable queries shape the conditional ones through the dual cross-attention
    assert decoder.query_feat.weight.grad.abs().sum() > 0
    assert decoder.layers[0].dual_attn.conditional_reads_learnable.in_proj_weight.grad.abs().sum() > 0
    # and the conditional queries come from the encoder (its memory and output heads)
    assert memory.grad.abs().sum() > 0
    decoder.zero_grad()
    memory.grad = None
    out.final.masks[:, 5:].sum().backward()  # the learnable queries only
    assert decoder.query_feat.weight.grad.abs().sum() > 0
    # its box trains too, through the first layer's position embedding and sampling points
    assert decoder.query_embed.weight.grad.abs().sum() > 0
    assert memory.grad.abs().sum() > 0


def test_strategy_switch_changes_the_query_set_as_documented():
    assert query_counts("meld", num_learnable=100, num_conditional=300) == (100, 300)
    assert query_counts("learnable", num_learnable=100, num_conditional=300) == (400, 0)
    assert query_counts("conditional", num_learnable=100, num_conditional=300) == (0, 400)
    with pytest.raises(ValueError, match="query_strategy"):
        query_counts("both", num_learnable=1, num_conditional=1)
    memory, mask_features, prompts = tiny_inputs()
    kinds = {}
    for strategy in ("learnable", "conditional", "meld"):
        decoder = tiny_meld(strategy, num_learnable=3, num_conditional=4)
        out = decoder(memory, SHAPES, mask_features, prompts)
        kinds[strategy] = out.query_kinds.tolist()
        assert hasattr(decoder, "query_feat") == (strategy != "conditional")
        assert hasattr(decoder, "enc_output") == (strategy != "learnable")
        assert (out.proposals is None) == (strategy == "learnable")
    assert kinds == {"learnable": [LEARNABLE] * 7, "conditional": [CONDITIONAL] * 7,
                     "meld": [CONDITIONAL] * 4 + [LEARNABLE] * 3}


def test_conditional_queries_are_the_proposals_best_scored_against_the_texts():
    decoder = tiny_meld("conditional", num_learnable=0, num_conditional=2)
    memory, mask_features, prompts = tiny_inputs(n=1)
    tokens = decoder.prompt_proj(prompts)
    spans = [slice(0, 3)]
    content = decoder.enc_output_norm(decoder.enc_output(memory))
    scores = decoder.class_embed(content, tokens, spans)[0, :, 0]
    picked, _ = decoder.conditional_queries(memory, SHAPES, tokens, spans)
    best = [int(i) for i in scores.argsort(descending=True)]
    # the chosen two are the best-scoring among the valid (non-border) proposals
    assert any(torch.allclose(picked[0, 0], content[0, i]) for i in best[:3])
    assert picked.shape == (1, 2, DIM)


def test_query_type_shares_counts_things_and_stuff_by_kind():
    kinds = [CONDITIONAL, CONDITIONAL, LEARNABLE, LEARNABLE, CONDITIONAL]
    things = [True, True, True, False, False]
    shares = query_type_shares(kinds, things)
    assert math.isclose(shares.things_by_conditional, 2 / 3)
    assert math.isclose(shares.things_by_learnable, 1 / 3)
    assert shares.stuff_by_learnable == shares.stuff_by_conditional == 0.5
    assert (shares.num_things, shares.num_stuff) == (3, 2)
    empty = query_type_shares([CONDITIONAL], [True])
    assert math.isnan(empty.stuff_by_learnable) and empty.things_by_conditional == 1.0
    with pytest.raises(ValueError, match="2 kinds for 1 objects"):
        query_type_shares([0, 1], [True])
    with pytest.raises(ValueError, match="unknown query kinds"):
        query_type_shares([7], [True])


def test_matched_query_kinds_follow_the_hungarian_assignment():
    decoder = tiny_meld(num_learnable=1, num_conditional=1)
    memory, mask_features, prompts = tiny_inputs(n=1)
    out = decoder(memory, SHAPES, mask_features, prompts)
    # a ground truth where the learnable query's mask is positive everywhere it predicts: make
    # its cost lowest by giving it the learnable query's own box and mask
    learnable = (out.query_kinds == LEARNABLE).nonzero()[0, 0]
    box = out.final.boxes[0, learnable].detach()[None]
    mask = (out.final.masks[0, learnable].detach() > 0).float()
    mask = torch.nn.functional.interpolate(mask[None, None], size=(32, 32))[0]
    target = Target(labels=torch.tensor([0]), boxes=box, masks=mask)
    from segllm.modeling.decoders.query import QueryLossConfig

    (kinds,) = matched_query_kinds(out, [target], QueryLossConfig(num_points=4096,
                                                                  class_weight=0.0))
    assert kinds.tolist() == [LEARNABLE]


def test_decode_texts_gives_one_class_per_text_and_the_text_loss_is_finite():
    torch.manual_seed(0)
    decoder = build_decoder(SegLLMConfig.from_name("querymeld-tiny", mask_aware_decoding=False))
    pixels = torch.randn(2, 3, 64, 64)
    features = decoder.encode_image(pixels)
    texts = [torch.randn(3, 32), torch.randn(5, 32)]
    outputs = decoder.decode_texts(features, texts)
    assert [tuple(o.final.logits.shape) for o in outputs] == [(1, 12, 3), (1, 12, 5)]
    masks = torch.zeros(1, 64, 64)
    masks[0, 8:30, 8:30] = 1
    targets = [Target(labels=torch.tensor([2]), boxes=torch.tensor([[0.3, 0.3, 0.35, 0.35]]),
                      masks=masks),
               Target(labels=torch.tensor([4]), boxes=torch.tensor([[0.5, 0.5, 0.2, 0.2]]),
                      masks=torch.zeros(1, 64, 64))]
    loss, parts = decoder.text_loss(outputs, targets, has_masks=[True, False])
    assert torch.isfinite(loss) and set(parts) == {"class", "box_l1", "giou", "mask_bce", "dice"}
    loss.backward()
    assert decoder.predictor.query_feat.weight.grad.abs().sum() > 0
    found = decoder.instances(outputs[1], (64, 64), (48, 40), top_k=4)
    assert len(found) == 4 and all(i.mask.shape == (48, 40) and 0 <= i.text_index < 5
                                   for i in found)
    assert sorted((i.score for i in found), reverse=True) == [i.score for i in found]


def test_querymeld_presets_and_describe():
    config = SegLLMConfig.from_name("segllm-7b-querymeld")
    meld = config.decoder_config
    assert (config.decoder, meld.num_learnable, meld.num_conditional, meld.query_strategy,
            meld.prompt_dim, meld.decoder_layers) == ("querymeld", 100, 300, "meld", 768, 9)
    assert meld.loss.class_weight == 4.0  # MaskDINO's
    assert "100 learnable + 300 conditional" in QueryMeldDecoder.describe(meld)
    assert SegLLMConfig.from_dict(config.to_dict()).decoder_config == meld
    with pytest.raises(ValueError, match="query_strategy"):
        SegLLMConfig.from_name("querymeld-tiny", **{"decoder_config.query_strategy": "both"})


@pytest.fixture()
def meld_model(tiny_tokenizer):
    torch.manual_seed(0)
    config = SegLLMConfig.from_name("querymeld-tiny", **{"trainable.decoder.mask_decoder": True})
    return SegLLMModel.from_config(config, tokenizer=tiny_tokenizer)


def test_segllm_with_the_querymeld_decoder_trains_through_the_set_loss(meld_model):
    model = meld_model
    items = [make_conversation("conv-a", seed=1), make_conversation("conv-b", 40, 56, seed=2)]
    batch = build_batch(items, model.tokenizer, model.config)
    assert any(r.any() for r in batch.seg_ref_masks)  # references: a second supervised class
    out = compute_objective(model, batch)
    assert torch.isfinite(out.loss) and out.num_masks == 8
    assert set(out.mask_parts) == {"class", "box_l1", "giou", "mask_bce", "dice"}
    assert [tuple(m.shape) for m in out.mask_logits] == [(4, 48, 64), (4, 40, 56)]
    out.loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    params = dict(model.named_parameters())
    for name in ("seg_head.mlp.0.weight", "decoder.predictor.query_feat.weight",
                 "decoder.predictor.layers.0.dual_attn.learnable_reads_conditional.in_proj_weight"):
        assert params[name].grad.abs().sum() > 0, name
    assert not any(n.startswith(("decoder.backbone.", "decoder.pixel_decoder."))
                   for n, p in model.named_parameters() if p.requires_grad)


def test_a_trained_decoder_file_loads_as_segllms_decoder_checkpoint(meld_model, tmp_path):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in meld_model.decoder.state_dict().items()}
    save_file(state, str(tmp_path / "decoder.safetensors"))
    read = QueryMeldDecoder.read_checkpoint(tmp_path / "decoder.safetensors")
    fresh = build_decoder(meld_model.config)
    fresh.load_checkpoint(read, source="decoder.safetensors")
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, state[name]), name
    with pytest.raises(FileNotFoundError):
        QueryMeldDecoder.read_checkpoint(tmp_path / "missing.safetensors")


def test_segllm_info_shows_the_querymeld_presets(capsys):
    from segllm.cli import main

    assert main(["info", "querymeld-tiny"]) == 0
    out = capsys.readouterr().out
    assert "querymeld: QueryMeldNet-style R10" in out and "4 learnable + 8 conditional" in out
    assert "querymeld_mask_decoder" in out
