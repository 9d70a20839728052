"""HIPIE's checkpoint layout -> ours, on a tiny state dict written as HIPIE's code names it
(``HIPIE_IMG``: ``detr.detr.`` a ``DeformableDETRDINO`` with a detectron2 ResNet, per-layer
box / class head clones registered twice, the CondInst mask head, the stuff decoder, BERT)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from segllm.batching import build_batch
from segllm.config import SegLLMConfig
from segllm.modeling.decoders import build_decoder
from segllm.modeling.decoders.hipie import HIPIEDecoder
from segllm.modeling.decoders.hipie_checkpoint import convert_hipie_state
from segllm.modeling.llava import build_llava_config
from segllm.modeling.loading import CheckpointError
from segllm.modeling.model import SegLLMModel
from segllm.tokenizer import build_tiny_tokenizer
from segllm.train.objective import compute_objective
from tests.conftest import make_conversation

D, HEADS, LEVELS, POINTS, FFN, TEXT, PROPOSALS = 32, 2, 4, 2, 64, 32, 4


def d2_resnet(state: dict, prefix: str) -> None:
    """detectron2's BasicBlock ResNet (one block a stage, as ``hipie-tiny``): ``stem.conv1``,
    ``resN.0.convK`` and ``shortcut``, each conv with its ``norm`` (FrozenBatchNorm2d)."""
    def conv(name: str, out: int, inp: int, k: int) -> None:
        state[f"{prefix}{name}.weight"] = torch.randn(out, inp, k, k)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            state[f"{prefix}{name}.norm.{stat}"] = torch.rand(out) + 0.5
    conv("stem.conv1", 64, 3, 7)
    inp = 64
    for stage, out in zip(("res2", "res3", "res4", "res5"), (64, 128, 256, 512), strict=True):
        conv(f"{stage}.0.conv1", out, inp, 3)
        conv(f"{stage}.0.conv2", out, out, 3)
        if inp != out:
            conv(f"{stage}.0.shortcut", out, inp, 1)
        inp = out


def linear(state: dict, name: str, out: int, inp: int) -> None:
    state[f"{name}.weight"] = torch.randn(out, inp)
    state[f"{name}.bias"] = torch.randn(out)


def norm(state: dict, name: str, size: int) -> None:
    state[f"{name}.weight"] = torch.rand(size)
    state[f"{name}.bias"] = torch.randn(size)


def deform_attn(state: dict, name: str) -> None:
    linear(state, f"{name}.sampling_offsets", HEADS * LEVELS * POINTS * 2, D)
    linear(state, f"{name}.attention_weights", HEADS * LEVELS * POINTS, D)
    linear(state, f"{name}.value_proj", D, D)
    linear(state, f"{name}.output_proj", D, D)


def hipie_state(*, encoder_layers: int = 2, decoder_layers: int = 2) -> dict:
    """A tiny HIPIE-R50-layout state dict (``hipie-tiny`` sizes, a 32-d "text")."""
    state: dict[str, torch.Tensor] = {}
    d2_resnet(state, "detr.detr.backbone.0.backbone.")
    for level, channels in enumerate((128, 256, 512)):
        state[f"detr.detr.input_proj.{level}.0.weight"] = torch.randn(D, channels, 1, 1)
        state[f"detr.detr.input_proj.{level}.0.bias"] = torch.randn(D)
        norm(state, f"detr.detr.input_proj.{level}.1", D)
    state["detr.detr.input_proj.3.0.weight"] = torch.randn(D, 512, 3, 3)
    state["detr.detr.input_proj.3.0.bias"] = torch.randn(D)
    norm(state, "detr.detr.input_proj.3.1", D)
    t = "detr.detr.transformer."
    state[t + "level_embed"] = torch.randn(LEVELS, D)
    for i in range(encoder_layers):
        deform_attn(state, f"{t}encoder.layers.{i}.self_attn")
        norm(state, f"{t}encoder.layers.{i}.norm1", D)
        linear(state, f"{t}encoder.layers.{i}.linear1", FFN, D)
        linear(state, f"{t}encoder.layers.{i}.linear2", D, FFN)
        norm(state, f"{t}encoder.layers.{i}.norm2", D)
        linear(state, f"{t}encoder.vl_layers.{i}.b_attn.v_proj", D, D)  # early fusion
        norm(state, f"{t}encoder.lang_layers.{i}.norm1", TEXT)
    for i in range(decoder_layers):
        layer = f"{t}decoder.layers.{i}."
        deform_attn(state, layer + "cross_attn")
        norm(state, layer + "norm1", D)
        state[layer + "self_attn.in_proj_weight"] = torch.randn(3 * D, D)
        state[layer + "self_attn.in_proj_bias"] = torch.randn(3 * D)
        linear(state, layer + "self_attn.out_proj", D, D)
        norm(state, layer + "norm2", D)
        linear(state, layer + "linear1", FFN, D)
        linear(state, layer + "linear2", D, FFN)
        norm(state, layer + "norm3", D)
    linear(state, t + "decoder.ref_point_head.layers.0", D, 2 * D)
    linear(state, t + "decoder.ref_point_head.layers.1", D, D)
    linear(state, t + "enc_output", D, D)
    norm(state, t + "enc_output_norm", D)
    linear(state, t + "resizer.fc", D, TEXT)
    norm(state, t + "resizer.layer_norm", D)
    state[t + "tgt_embed.weight"] = torch.randn(PROPOSALS, D)
    # with box refinement and two stages: one head per decoder layer plus the proposals',
    # the same modules also registered under transformer.decoder (and the class heads' last
    # one a binary Still_Classifier)
    for i in range(decoder_layers + 1):
        for owner in ("detr.detr.", t + "decoder."):
            for j, (out, inp) in enumerate(((D, D), (D, D), (4, D))):
                linear(state, f"{owner}bbox_embed.{i}.layers.{j}", out, inp)
            if i < decoder_layers:
                linear(state, f"{owner}class_embed.{i}.dot_product_projection_text", D, TEXT)
                state[f"{owner}class_embed.{i}.log_scale"] = torch.zeros(1)
                state[f"{owner}class_embed.{i}.bias_lang"] = torch.zeros(TEXT)
            else:
                linear(state, f"{owner}class_embed.{i}.body", 1, D)
        if i < decoder_layers:
            linear(state, f"detr.detr.iou_head.{i}", 1, D)
    linear(state, "detr.controller.layers.0", D, D)
    state["detr.mask_head.lay1.weight"] = torch.randn(D, D + 2, 3, 3)
    linear(state, "detr.resizer.fc", D, TEXT)
    state["detr.label_enc.weight"] = torch.randn(80, D)
    linear(state, "detr.mask_dino.predictor.mask_embed.layers.0", D, D)
    state["text_encoder.body.model.embeddings.word_embeddings.weight"] = torch.randn(10, TEXT)
    return state


def tiny_decoder() -> HIPIEDecoder:
    torch.manual_seed(0)
    return build_decoder(SegLLMConfig.from_name("hipie-tiny", mask_aware_decoding=False))


def test_every_hipie_key_is_loaded_or_dropped_with_a_reason():
    decoder = tiny_decoder()
    state = hipie_state()
    converted = convert_hipie_state(state, decoder.state_dict(), decoder_layers=2,
                                    source="tiny.pth")
    assert len(converted.state) + len(converted.dropped) == len(state)
    assert all(converted.dropped.values())
    decoder.load_checkpoint(state, source="tiny.pth")
    ours = decoder.state_dict()
    # renamed tensors land unchanged, e.g. detectron2's names for torchvision's modules
    pairs = {
        "detr.detr.backbone.0.backbone.stem.conv1.weight": "backbone.stem.0.weight",
        "detr.detr.backbone.0.backbone.res3.0.conv2.norm.running_var":
            "backbone.res3.0.bn2.running_var",
        "detr.detr.backbone.0.backbone.res4.0.shortcut.norm.bias":
            "backbone.res4.0.downsample.1.bias",
        "detr.detr.input_proj.3.0.weight": "pixel_decoder.input_proj.3.0.weight",
        "detr.detr.transformer.level_embed": "pixel_decoder.level_embed",
        "detr.detr.transformer.encoder.layers.1.self_attn.sampling_offsets.bias":
            "pixel_decoder.encoder.1.self_attn.sampling_offsets.bias",
        "detr.detr.transformer.decoder.layers.0.self_attn.in_proj_weight":
            "predictor.layers.0.self_attn.in_proj_weight",
        "detr.detr.transformer.decoder.layers.1.cross_attn.value_proj.weight":
            "predictor.layers.1.cross_attn.value_proj.weight",
        "detr.detr.transformer.decoder.ref_point_head.layers.0.weight":
            "predictor.ref_point_head.layers.0.weight",
        "detr.detr.transformer.enc_output_norm.bias": "predictor.enc_output_norm.bias",
        "detr.detr.transformer.resizer.fc.weight": "predictor.prompt_proj.0.weight",
        # one shared box head: the last decoder layer's clone
        "detr.detr.bbox_embed.1.layers.2.weight": "predictor.bbox_embed.layers.2.weight",
        # the IoU branch: one head per decoder layer, as theirs
        "detr.detr.iou_head.1.weight": "predictor.iou_embed.1.weight",
    }
    for theirs, name in pairs.items():
        assert torch.equal(ours[name], state[theirs]), theirs
    assert "proposals'" in converted.dropped["detr.detr.transformer.tgt_embed.weight"]
    assert "shares one" in converted.dropped["detr.detr.bbox_embed.0.layers.0.weight"]
    assert "BERT" in converted.dropped[
        "text_encoder.body.model.embeddings.word_embeddings.weight"]
    # our parts HIPIE has no weights for keep their initialisation, and are listed
    unfilled_parts = {".".join(k.split(".")[:2]) for k in converted.unfilled}
    assert unfilled_parts == {
        "pixel_decoder.lateral_conv", "pixel_decoder.output_conv", "pixel_decoder.mask_features",
        "predictor.layers", "predictor.decoder_norm", "predictor.class_embed",
        "predictor.mask_embed", "predictor.query_feat", "predictor.query_embed"}
    assert {k.split(".")[3] for k in converted.unfilled if k.startswith("predictor.layers")} == {
        "prompt_attn", "norm_prompt"}
    # and the decoder still runs
    with torch.no_grad():
        features = decoder.encode_image(torch.zeros(1, 3, 64, 64))
        logits, _ = decoder.decode(features, torch.randn(1, 2, 32), (64, 64), (64, 64))
    assert torch.isfinite(logits).all()


def test_unknown_keys_and_misfits_are_errors_naming_the_key():
    decoder = tiny_decoder()
    ours = decoder.state_dict()
    state = hipie_state()
    state["detr.detr.transformer.decoder.layers.0.ca_text.in_proj_weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"tiny.pth: unknown HIPIE key "
                       r"'detr.detr.transformer.decoder.layers.0.ca_text.in_proj_weight'"):
        convert_hipie_state(state, ours, decoder_layers=2, source="tiny.pth")
    deeper = hipie_state(encoder_layers=3)
    with pytest.raises(CheckpointError, match=r"encoder.layers.2.self_attn.* which this "
                       "decoder does not have"):
        convert_hipie_state(deeper, ours, decoder_layers=2, source="tiny.pth")
    wide = hipie_state()
    wide["detr.detr.transformer.level_embed"] = torch.zeros(LEVELS, 2 * D)
    with pytest.raises(CheckpointError, match=r"level_embed' has shape \(4, 64\)"):
        convert_hipie_state(wide, ours, decoder_layers=2, source="tiny.pth")


def test_the_checkpoint_file_sets_the_sizes_it_was_trained_with(tmp_path):
    state = hipie_state(encoder_layers=3, decoder_layers=1)
    path = tmp_path / "hipie_r50.pth"
    torch.save({"model": state, "iteration": 7}, path)  # detectron2's checkpointer layout
    read = HIPIEDecoder.read_checkpoint(path)
    assert set(read) == set(state)
    base = SegLLMConfig.from_name("hipie-tiny", mask_aware_decoding=False)
    config = HIPIEDecoder.config_for_checkpoint(read, base.decoder_config)
    assert (config.encoder_layers, config.decoder_layers, config.hidden_dim,
            config.extra_levels, config.prompt_dim, config.num_proposals,
            config.encoder_ffn_dim, config.decoder_ffn_dim) == (3, 1, 32, 1, 32, 4, 64, 64)
    assert config.iou_branch
    no_iou = {k: v for k, v in read.items() if not k.startswith("detr.detr.iou_head.")}
    assert not HIPIEDecoder.config_for_checkpoint(no_iou, base.decoder_config).iou_branch
    assert HIPIEDecoder.config_for_checkpoint({"x": torch.zeros(1)}, base.decoder_config) is (
        base.decoder_config)
    base.decoder_config = config
    decoder = build_decoder(base)
    decoder.load_checkpoint(read, source=str(path))
    assert torch.equal(decoder.state_dict()["pixel_decoder.encoder.2.linear1.weight"],
                       state["detr.detr.transformer.encoder.layers.2.linear1.weight"])
    # with one decoder layer, clone 0 is its box head (clone 1 is the proposals')
    assert torch.equal(decoder.state_dict()["predictor.bbox_embed.layers.0.bias"],
                       state["detr.detr.bbox_embed.0.layers.0.bias"])
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth: cannot be read"):
        HIPIEDecoder.read_checkpoint(tmp_path / "bad.pth")


@pytest.fixture()
def llava_dir(tmp_path):
    """A tiny llava-hf directory (the hipie-tiny preset's LLM sizes) with a base tokenizer."""
    cfg = SegLLMConfig.from_name("hipie-tiny")
    tok = build_tiny_tokenizer(segllm_tokens=False)
    cfg.token_ids.update(image=tok.convert_tokens_to_ids("<image>"), pad=tok.pad_token_id,
                         bos=tok.bos_token_id, eos=tok.eos_token_id)
    LlavaForConditionalGeneration(build_llava_config(cfg)).save_pretrained(tmp_path / "llava-hf")
    tok.save_pretrained(tmp_path / "llava-hf")
    return tmp_path / "llava-hf"


def test_from_components_loads_a_hipie_file_and_the_model_produces_masks(llava_dir, tmp_path):
    """End to end: a file in HIPIE's released layout (detectron2's ``{"model": ...}``, 3
    encoder layers where the preset says 2) through ``SegLLMModel.from_components``: its sizes
    win, every kept tensor is found unchanged in the model, and the model makes masks."""
    torch.manual_seed(3)
    state = hipie_state(encoder_layers=3)
    path = tmp_path / "hipie_r50.pth"
    torch.save({"model": state, "iteration": 90000}, path)
    model = SegLLMModel.from_components(llava_dir, path, preset="hipie-tiny")
    assert model.config.decoder_config.encoder_layers == 3
    ours = model.decoder.state_dict()
    converted = convert_hipie_state(state, ours, decoder_layers=2, source=str(path))
    assert len(converted.state) + len(converted.dropped) == len(state)
    for name, tensor in converted.state.items():
        assert torch.equal(ours[name], tensor), name
    # not trusting the converter's own naming: every tensor it keeps (random, so unique by
    # value) is somewhere in the model's decoder, bit for bit
    kept = [key for key in state if key not in converted.dropped]
    by_shape: dict[tuple, list[torch.Tensor]] = {}
    for tensor in ours.values():
        by_shape.setdefault(tuple(tensor.shape), []).append(tensor)
    missing = [key for key in kept
               if not any(torch.equal(state[key], t) for t in by_shape.get(tuple(state[key].shape), []))]
    assert not missing, missing
    assert len(kept) > 100  # the backbone, encoder, decoder layers and heads, not a handful
    # the training path (set loss) and the inference path both give masks
    tok = model.tokenizer
    batch = build_batch([make_conversation("c", 40, 56, seed=4)], tok, model.config)
    out = compute_objective(model, batch)
    assert torch.isfinite(out.loss) and out.mask_logits
    assert all(m.shape[-2:] == (40, 56) and torch.isfinite(m).all() for m in out.mask_logits)
    model.eval()
    with torch.no_grad():
        pixels = batch.decoder_pixel_values[:1]
        features = model.encode_images_for_decoder(pixels)
        hidden = torch.randn(2, model.config.llm.hidden_size)
        masks, scores, _ = model.decode_masks(hidden, features, batch.decoder_input_sizes[0],
                                              (40, 56))
    assert masks.shape == (2, 40, 56) and scores.shape == (2,)
    assert torch.isfinite(masks).all() and ((scores > 0) & (scores < 1)).all()
