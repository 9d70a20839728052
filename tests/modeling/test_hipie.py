"""The HIPIE-style query decoder's parts at tiny sizes: deformable attention against a loop,
Hungarian matching on a hand-made case, the set loss overfitting one example, the decoder
interface, and the real R50 sizes on the meta device."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models import resnet50
from torchvision.ops import sigmoid_focal_loss
from torchvision.ops.misc import FrozenBatchNorm2d

from segllm.config import SegLLMConfig
from segllm.modeling.decoders import build_decoder, decoder_class
from segllm.modeling.decoders.hipie import HIPIEDecoder
from segllm.modeling.decoders.query import QueryLossConfig, Target, match, ms_deform_attn
from segllm.modeling.decoders.query.losses import set_loss
from segllm.modeling.decoders.query.transformer_decoder import Predictions

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def loop_deform_attn(value, shapes, locations, weights):
    """Deformable attention one sample at a time: bilinear interpolation by hand (pixel
    centres at (i + 0.5) / size, zeros outside the map)."""
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(batch, queries, heads, dim, dtype=value.dtype)
    for b in range(batch):
        for q in range(queries):
            for m in range(heads):
                acc = torch.zeros(dim, dtype=value.dtype)
                for lv, (h, w) in enumerate(shapes):
                    for p in range(points):
                        x = locations[b, q, m, lv, p, 0] * w - 0.5
                        y = locations[b, q, m, lv, p, 1] * h - 0.5
                        x0, y0 = math.floor(x.item()), math.floor(y.item())
                        for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                            if 0 <= yy < h and 0 <= xx < w:
                                corner = (1 - (x - xx).abs()) * (1 - (y - yy).abs())
                                v = value[b, starts[lv] + yy * w + xx, m]
                                acc = acc + weights[b, q, m, lv, p] * corner * v
                out[b, q, m] = acc
    return out.flatten(2)


def test_deformable_attention_equals_the_loop_in_values_and_gradients():
    torch.manual_seed(0)
    shapes = [(3, 4), (2, 2)]
    value = torch.randn(2, 16, 2, 3, dtype=torch.float64, requires_grad=True)
    # some points fall outside the maps (they read zeros)
    locations = (torch.rand(2, 3, 2, 2, 2, 2, dtype=torch.float64) * 1.4 - 0.2).requires_grad_()
    weights = torch.rand(2, 3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    fast = ms_deform_attn(value, shapes, locations, weights)
    slow = loop_deform_attn(value, shapes, locations, weights)
    assert fast.shape == (2, 3, 6)
    assert torch.allclose(fast, slow, atol=1e-12)
    probe = torch.randn_like(fast)
    grads_fast = torch.autograd.grad((fast * probe).sum(), (value, locations, weights))
    grads_slow = torch.autograd.grad((slow * probe).sum(), (value, locations, weights))
    for a, b in zip(grads_fast, grads_slow, strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def square(size: int, x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    m = torch.zeros(size, size)
    m[y0:y1, x0:x1] = 1
    return m


def hand_made_case():
    """Three queries, two objects: query 2 is object 0, query 0 is object 1, query 1 nothing."""
    left, corner = square(16, 0, 0, 8, 16), square(16, 12, 0, 16, 4)
    target = Target(labels=torch.tensor([0, 1]),
                    boxes=torch.tensor([[0.25, 0.5, 0.5, 1.0], [0.875, 0.125, 0.25, 0.25]]),
                    masks=torch.stack([left, corner]))
    masks = torch.stack([corner, torch.zeros(16, 16), left]) * 20 - 10
    boxes = torch.tensor([[0.85, 0.15, 0.3, 0.3], [0.5, 0.5, 0.1, 0.1], [0.3, 0.5, 0.5, 0.9]])
    logits = torch.tensor([[-3.0, 3.0], [-3.0, -3.0], [3.0, -3.0]])
    return Predictions(logits=logits[None], boxes=boxes[None], masks=masks[None]), target


def test_hungarian_matching_gives_each_object_one_query_and_the_rest_no_object():
    torch.manual_seed(0)
    pred, target = hand_made_case()
    cfg = QueryLossConfig(num_points=64)
    rows, cols = match(pred.logits[0], pred.boxes[0], pred.masks[0], target,
                       class_weight=cfg.class_weight, box_l1_weight=cfg.box_l1_weight,
                       giou_weight=cfg.giou_weight, mask_bce_weight=cfg.mask_bce_weight,
                       dice_weight=cfg.dice_weight, num_points=cfg.num_points)
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == [(0, 1), (2, 0)]
    # the class loss: matched queries learn their object's class, query 1 "no object"
    parts = set_loss(pred, [target], cfg, num_objects=2.0)
    onehot = torch.tensor([[[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]])
    want = sigmoid_focal_loss(pred.logits, onehot, reduction="sum") / 2.0
    assert torch.allclose(parts["class"], want)
    # right objects on the right queries: small box and mask losses (edges stay soft)
    assert parts["box_l1"] < 0.2 and parts["dice"] < 0.35
    empty = Target(labels=torch.zeros(0, dtype=torch.long), boxes=torch.zeros(0, 4),
                   masks=torch.zeros(0, 16, 16))
    rows, cols = match(pred.logits[0], pred.boxes[0], pred.masks[0], empty, class_weight=1,
                       box_l1_weight=1, giou_weight=1, mask_bce_weight=1, dice_weight=1,
                       num_points=8)
    assert rows.numel() == cols.numel() == 0


def tiny_decoder(mask_aware: bool = False) -> HIPIEDecoder:
    torch.manual_seed(0)
    config = SegLLMConfig.from_name("hipie-tiny", mask_aware_decoding=mask_aware)
    return build_decoder(config)


def test_set_loss_falls_when_overfitting_one_example():
    # without the IoU branch: its BCE against soft IoU targets has a floor (their entropy),
    # so the total could not fall as far; that branch has its own test
    torch.manual_seed(0)
    decoder = build_decoder(SegLLMConfig.from_name(
        "hipie-tiny", mask_aware_decoding=True, **{"decoder_config.iou_branch": False}))
    image = torch.randint(0, 255, (3, 48, 64), dtype=torch.uint8)
    pixels, size = HIPIEDecoder.preprocess(image, decoder.config)
    prompts = torch.randn(2, 2, 32)
    targets = torch.stack([square(64, 4, 4, 30, 20)[:48], square(64, 30, 10, 60, 40)[:48]])
    refs = torch.stack([torch.zeros(48, 64), targets[0]])  # the second [SEG] references one
    decoder.backbone.requires_grad_(False)  # frozen in SegLLM too; its features once
    with torch.no_grad():
        features = decoder.backbone(pixels[None])
    trained = [p for p in decoder.parameters() if p.requires_grad]
    optim = torch.optim.Adam(trained, lr=3e-3)
    losses, ious = [], []
    for _ in range(30):
        memory, _, mask_features = decoder.pixel_decoder(features)
        packed = torch.cat([memory.flatten(1), mask_features.flatten(1)], dim=1)
        logits, _, extra = decoder.decode_for_training(packed, prompts, size, (48, 64))
        loss = decoder.training_loss(mask_logits=[logits], targets=[targets],
                                     target_weights=None, ref_masks=[refs], extras=[extra],
                                     weights=None)
        assert torch.isfinite(loss.total) and loss.num_masks == 2
        assert set(loss.parts) == {"class", "box_l1", "giou", "mask_bce", "dice"}
        optim.zero_grad()
        loss.total.backward()
        optim.step()
        losses.append(loss.total.item())
        # the answer (the best target-class query) against the target, not the reference
        predicted = logits.detach() > decoder.mask_threshold
        hits = (predicted & targets.bool()).sum((1, 2)) / (predicted | targets.bool()).sum((1, 2))
        ious.append(hits.mean().item())
    assert sum(losses[-5:]) / 5 < 0.4 * sum(losses[:5]) / 5, losses
    assert ious[-1] > 0.6 and ious[-1] > ious[0] + 0.3, ious


def test_decode_follows_the_interface():
    decoder = tiny_decoder().eval()
    image = torch.randint(0, 255, (3, 40, 56), dtype=torch.uint8)
    pixels, size = HIPIEDecoder.preprocess(image, decoder.config)
    assert pixels.shape == (3, 64, 64) and size == HIPIEDecoder.resized_size(40, 56,
                                                                             decoder.config)
    assert size == (46, 64)
    # SegLLM pads with zeros before normalising: the padding reads -mean / std
    assert torch.allclose(pixels[0, 60, 0], torch.tensor(-123.675 / 58.395))
    with torch.no_grad():
        features = decoder.encode_image(torch.stack([pixels, pixels]))
        assert features.shape[0] == 2
        prompts = torch.randn(3, 2, decoder.prompt_dim)
        logits, scores = decoder.decode(features[:1], prompts, size, (40, 56))
        assert logits.shape == (3, 40, 56) and scores.shape == (3,)
        assert ((scores > 0) & (scores < 1)).all()
        again, _, extra = decoder.decode_for_training(features[1:], prompts, size, (40, 56))
        assert torch.allclose(logits, again, atol=1e-5)
        final = extra.outputs.final
        # "both": 4 proposals + 4 learnable queries, one class, 1/4-scale masks
        assert final.logits.shape == (3, 8, 1) and final.masks.shape == (3, 8, 16, 16)
        assert len(extra.outputs.layers) == 1 and extra.outputs.proposals is not None
        empty, none = decoder.decode(features[:1], prompts[:0], size, (40, 56))
        assert empty.shape == (0, 40, 56) and none.shape == (0,)
    assert decoder.mask_threshold == 0.0 and decoder.keep_float32
    assert set(decoder.trainable_groups()) == set(HIPIEDecoder.trainable_defaults)
    assert {name.split(".")[0] for name in decoder.state_dict()} == {
        "backbone", "pixel_decoder", "predictor"}


@pytest.mark.parametrize("strategy", ["conditional", "learnable", "both"])
def test_inference_computes_only_the_answers_mask(strategy, monkeypatch):
    """``decode`` (inference) gives the training path's answer without building any query's
    mask set: at real size every query's masks of every layer were ~262 MB a prompt."""
    config = SegLLMConfig.from_name("hipie-tiny", **{"decoder_config.query_strategy": strategy})
    decoder = build_decoder(config).eval()  # mask-aware: two classes, the target is one
    torch.manual_seed(1)
    with torch.no_grad():
        features = decoder.encode_image(torch.randn(1, 3, 64, 64))
        prompts = torch.randn(3, 2, decoder.prompt_dim)
        full, full_scores, _ = decoder.decode_for_training(features, prompts, (50, 64), (40, 51))

        def no_mask_sets(*args, **kwargs):
            raise AssertionError("inference built a set of every query's masks")

        monkeypatch.setattr(decoder.predictor, "predict", no_mask_sets)
        logits, scores = decoder.decode(features, prompts, (50, 64), (40, 51))
    assert logits.shape == (3, 40, 51) and scores.shape == (3,)
    assert torch.allclose(logits, full, atol=1e-5) and torch.allclose(scores, full_scores)


def test_targets_with_weight_zero_and_empty_targets_are_left_out():
    decoder = tiny_decoder()
    features = decoder.encode_image(torch.zeros(1, 3, 64, 64))
    prompts = torch.randn(2, 2, 32)
    logits, _, extra = decoder.decode_for_training(features, prompts, (64, 64), (64, 64))
    targets = torch.stack([square(64, 4, 4, 20, 20), torch.zeros(64, 64)])
    kwargs = {"mask_logits": [logits], "targets": [targets], "ref_masks": None,
              "extras": [extra], "weights": None}
    # a box-derived mask (weight 0) is not supervised; an empty mask is "no object"
    one = decoder.training_loss(target_weights=[torch.tensor([0.0, 1.0])], **kwargs)
    assert one.num_masks == 1 and torch.isfinite(one.total)
    assert one.parts["box_l1"] == 0  # the empty target has no box to match
    none = decoder.training_loss(target_weights=[torch.tensor([0.0, 0.0])], **kwargs)
    assert none.num_masks == 0 and torch.isfinite(none.total)
    both = decoder.training_loss(target_weights=None, **kwargs)
    assert both.num_masks == 2 and both.parts["box_l1"] > 0


def test_each_query_strategy_builds_its_queries():
    for strategy, queries, proposals in (("learnable", 4, False), ("conditional", 4, True)):
        config = SegLLMConfig.from_name("hipie-tiny", mask_aware_decoding=False,
                                        **{"decoder_config.query_strategy": strategy})
        decoder = build_decoder(config)
        with torch.no_grad():
            features = decoder.encode_image(torch.zeros(1, 3, 64, 64))
            _, _, extra = decoder.decode_for_training(features, torch.randn(2, 2, 32),
                                                      (64, 64), (64, 64))
        assert extra.outputs.final.logits.shape[1] == queries
        assert (extra.outputs.proposals is not None) == proposals


def test_mask_aware_needs_two_prompt_tokens():
    decoder = tiny_decoder(mask_aware=True)
    with torch.no_grad():
        features = decoder.encode_image(torch.zeros(1, 3, 64, 64))
        with pytest.raises(ValueError, match="at least 2 prompt tokens"):
            decoder.decode(features, torch.randn(1, 1, 32), (64, 64), (64, 64))
    with pytest.raises(ValueError, match="decoder_config.image_size: 60 is not a multiple"):
        build_decoder(SegLLMConfig.from_name("hipie-tiny", **{"decoder_config.image_size": 60}))


def test_real_r50_sizes_on_the_meta_device():
    config = SegLLMConfig.from_name("segllm-7b-hipie")
    assert config.decoder == "hipie" and config.seg_head.num_prompt_tokens == 8
    with torch.device("meta"):
        decoder = build_decoder(config)
        reference = resnet50(norm_layer=FrozenBatchNorm2d)
    counts = {name: sum(p.numel() for p in module.parameters())
              for name, module in decoder.trainable_groups().items()}
    fc = sum(p.numel() for p in reference.fc.parameters())
    assert counts["backbone"] == sum(p.numel() for p in reference.parameters()) - fc
    # the pixel decoder by hand: 6 encoder layers (deformable attention over 4 levels, 8 heads,
    # 4 points: offsets, weights, value and output projections; FFN 2048; two LayerNorms), the
    # 1x1 projections of res3-res5 and the 3x3 stride-2 one of the extra level (each with
    # GroupNorm), the level embeddings, and the 1/4-scale FPN step with the mask projection
    attention = 3 * (256 * 256 + 256) + (256 * 128 + 128)
    layer = attention + (256 * 2048 + 2048 + 2048 * 256 + 256) + 2 * 512
    projections = sum(c * 256 + 256 + 512 for c in (512, 1024, 2048)) + 2048 * 256 * 9 + 768
    fpn = (256 * 256 + 512) + (256 * 256 * 9 + 512) + (256 * 256 + 256)
    assert 6 * layer + projections + 4 * 256 + fpn == 14_055_424
    iou_branch = 6 * (256 + 1)  # one Linear(256, 1) per decoder layer
    assert counts == {"backbone": 23_454_912, "pixel_decoder": 14_055_424,
                      "mask_decoder": 11_714_309 + iou_branch}
    assert decoder.config.encoder_layers == 6 and decoder.config.decoder_layers == 6
    assert decoder_class("hipie").describe(config.decoder_config).startswith("HIPIE-style R50")
    assert decoder_class("hipie").describe_loss(config.decoder_config, config.loss).startswith(
        "set loss (decoder_config.loss): focal class x2.0, L1 x5.0 + GIoU x2.0")


def test_the_iou_branch_is_trained_on_matched_queries_and_scores_the_answer():
    """HIPIE's IoU branch (r50.yaml USE_IOU_BRANCH): each decoder layer predicts every query's
    box IoU; BCE against the matched box's actual IoU; the answer is the query with the best
    sqrt(p_class * p_iou), in both decoding paths."""
    decoder = tiny_decoder().eval()
    assert decoder.config.iou_branch and len(decoder.predictor.iou_embed) == 2
    torch.manual_seed(2)
    with torch.no_grad():  # make the IoU heads matter: different for every query
        for head in decoder.predictor.iou_embed:
            head.weight.normal_(0, 1.0)
    features = decoder.encode_image(torch.randn(1, 3, 64, 64))
    prompts = torch.randn(2, 2, 32)
    logits, scores, extra = decoder.decode_for_training(features, prompts, (64, 64), (64, 64))
    final = extra.outputs.final
    assert final.ious.shape == final.logits.shape[:2]
    assert extra.outputs.proposals.ious is None  # HIPIE has no IoU head for the proposals
    expected = (final.logits[..., 0].sigmoid() * final.ious.sigmoid()).sqrt()
    assert torch.allclose(scores, expected.amax(1))
    assert (expected.argmax(1) != final.logits[..., 0].argmax(1)).any()  # it changes the pick
    with torch.no_grad():
        fast, fast_scores = decoder.decode(features, prompts, (64, 64), (64, 64))
    assert torch.allclose(fast, logits, atol=1e-5) and torch.allclose(fast_scores, scores)
    # the loss: BCE of the matched queries' predicted IoU against their boxes' actual IoU
    targets = torch.stack([square(64, 4, 4, 30, 20), square(64, 30, 10, 60, 40)])
    loss = decoder.training_loss(mask_logits=[logits], targets=[targets], target_weights=None,
                                 ref_masks=None, extras=[extra], weights=None)
    assert loss.parts["box_iou"] > 0
    loss.parts["box_iou"].backward()
    assert decoder.predictor.iou_embed[1].weight.grad.abs().sum() > 0
    assert "box-IoU" in HIPIEDecoder.describe_loss(decoder.config, None)
