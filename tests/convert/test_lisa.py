"""``segllm convert lisa`` against outputs of LISA's own code (tests/fixtures/convert/lisa/).

The fixture is a tiny LISA built, saved and run by dvlab-research/LISA's classes under their
pinned transformers 4.31 (tools/make_lisa_fixture.py, tools/CONVERT_VERSIONS.md): its
checkpoint folder, the CLIP folder it names, and their token ids, pixels, logits, [SEG] masks
and a greedy continuation for one image and question.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from segllm.cli import main
from segllm.conversation import Turn, encode_conversation
from segllm.convert.source import ConvertError

FIXTURE = Path(__file__).parents[1] / "fixtures" / "convert" / "lisa"
IMAGE_TOKEN_INDEX = -200  # LISA's stand-in id for the image in its token ids


@pytest.fixture(scope="module")
def reference():
    return (load_file(FIXTURE / "reference.safetensors"),
            json.loads((FIXTURE / "reference.json").read_text()))


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lisa") / "model"
    rc = main(["convert", "lisa", str(FIXTURE / "checkpoint"), str(out),
               "--vision-tower", str(FIXTURE / "clip")])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def model(converted):
    from segllm.modeling.model import SegLLMModel

    return SegLLMModel.from_pretrained(converted).eval()


def expand_image(ids: list[int], image_id: int, count: int) -> list[int]:
    out: list[int] = []
    for t in ids:
        out += [image_id] * count if t == IMAGE_TOKEN_INDEX else [t]
    return out


def test_template_and_tokenizer_give_lisas_ids(model, reference):
    tensors, meta = reference
    cfg = model.config
    enc = encode_conversation([Turn(meta["question"], meta["answer"], num_targets=1)],
                              model.tokenizer, cfg.token_ids, cfg.vision.num_image_tokens)
    theirs = expand_image(tensors["input_ids"].tolist(), cfg.token_ids["image"],
                          cfg.vision.num_image_tokens)
    assert enc.input_ids == theirs
    assert cfg.token_ids["seg"] == meta["seg_token_idx"]


def test_logits_and_masks_match_lisa(model, reference):
    tensors, meta = reference
    ids = expand_image(tensors["input_ids"].tolist(), model.config.token_ids["image"],
                       model.config.vision.num_image_tokens)
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                    pixel_values=tensors["clip_pixel_values"],
                    decoder_pixel_values=tensors["sam_pixel_values"],
                    decoder_input_sizes=[tuple(meta["sam_input_size"])],
                    original_sizes=[tuple(tensors["pred_masks"].shape[-2:])])
    vocab = tensors["logits"].shape[-1]
    torch.testing.assert_close(out.logits[0, :, :vocab], tensors["logits"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.hidden_states[0], tensors["last_hidden_state"], atol=1e-4,
                               rtol=1e-4)
    assert out.mask_logits[0].shape == tensors["pred_masks"].shape
    torch.testing.assert_close(out.mask_logits[0], tensors["pred_masks"], atol=1e-4, rtol=1e-4)


def test_greedy_continuation_matches_lisa(model, reference):
    """Their ``generate`` (8 greedy tokens) from the question; segllm's added tokens never win."""
    tensors, meta = reference
    prompt = meta["prompt_ids"]
    ids = expand_image(prompt, model.config.token_ids["image"], model.config.vision.num_image_tokens)
    new = []
    with torch.no_grad():
        for _ in range(8):
            input_ids = torch.tensor([ids + new])
            embeds = model.embed_inputs(input_ids, pixel_values=tensors["clip_pixel_values"])
            hidden = model.language_model(inputs_embeds=embeds).last_hidden_state
            new.append(int(model.llava.lm_head(hidden[0, -1]).argmax()))
    assert new == tensors["generated_ids"].tolist()[len(prompt):]


def test_preprocessing_matches_lisa(model, reference):
    """CLIPImageProcessor's centre crop and SAM's ResizeLongestSide, to resampling rounding."""
    from PIL import Image

    from segllm.modeling.decoders.sam import SAMDecoder
    from segllm.processing import preprocess_clip, to_image_tensor

    tensors, meta = reference
    image = to_image_tensor(Image.open(FIXTURE / "image.png"))
    cfg = model.config
    assert cfg.vision.aspect == "crop"
    clip = preprocess_clip(image, cfg.vision.image_size, aspect=cfg.vision.aspect)
    diff = (clip - tensors["clip_pixel_values"][0]).abs()
    assert diff.mean() < 1e-3 and diff.max() < 0.1  # 0.1 ~ 7 grey levels at an edge
    sam, size = SAMDecoder.preprocess(image, cfg.decoder_config)
    assert list(size) == meta["sam_input_size"]
    diff = (sam - tensors["sam_pixel_values"][0]).abs()
    assert diff.mean() < 5e-3 and diff.max() < 0.05


def test_chat_pipeline_runs_on_the_converted_model(converted, reference):
    from segllm.pipeline import SegLLMPipeline

    _, meta = reference
    pipe = SegLLMPipeline.from_pretrained(converted, dtype="fp32")
    reply = pipe.start(str(FIXTURE / "image.png")).ask(meta["question"])
    assert isinstance(reply.text, str)
    assert all(m.shape == (48, 80) for m in reply.masks)


def test_report_lists_every_dropped_tensor(converted):
    report = json.loads((converted / "convert_report.json").read_text())
    ckpt = report["checkpoint"]
    dropped = [k for keys in ckpt["dropped"].values() for k in keys]
    assert ckpt["mapped"] + len(dropped) == ckpt["tensors"]
    assert all(k.endswith("rotary_emb.inv_freq") for k in dropped)
    tower = report["vision_tower"]
    assert tower["mapped"] + sum(map(len, tower["dropped"].values())) == tower["tensors"]


def _copy_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "checkpoint"
    shutil.copytree(FIXTURE / "checkpoint", src)
    index_path = src / "pytorch_model.bin.index.json"
    return src, index_path


def _edit_last_shard(src: Path, index_path: Path, edit) -> None:
    index = json.loads(index_path.read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    state = torch.load(src / shard, weights_only=True)
    edit(state)
    torch.save(state, src / shard)
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard}
    index["weight_map"].update({k: shard for k in state})
    index_path.write_text(json.dumps(index))


def test_an_unknown_tensor_is_an_error_naming_it(tmp_path, capsys):
    src, index = _copy_checkpoint(tmp_path)
    _edit_last_shard(src, index, lambda s: s.__setitem__("model.extra_head.weight",
                                                         torch.zeros(2, 2)))
    rc = main(["convert", "lisa", str(src), str(tmp_path / "out"),
               "--vision-tower", str(FIXTURE / "clip")])
    assert rc == 2
    assert "model.extra_head.weight" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_missing_tensor_is_an_error_naming_it(tmp_path):
    from segllm.convert.lisa import convert

    src, index = _copy_checkpoint(tmp_path)
    _edit_last_shard(src, index, lambda s: s.pop("model.text_hidden_fcs.0.2.bias"))
    with pytest.raises(ConvertError, match=r"model\.text_hidden_fcs\.0\.2\.bias"):
        convert(src, vision_tower=FIXTURE / "clip")


def test_unmerged_lora_is_refused(tmp_path):
    from segllm.convert.lisa import convert

    src, index = _copy_checkpoint(tmp_path)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    _edit_last_shard(src, index, lambda s: s.__setitem__(key, torch.zeros(8, 64)))
    with pytest.raises(ConvertError, match="unmerged LoRA"):
        convert(src, vision_tower=FIXTURE / "clip")


def test_unsupported_systems_exit_2_with_the_reason(tmp_path, capsys):
    rc = main(["convert", "segllm", str(FIXTURE / "checkpoint"), str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "error:" in err and "HIPIE" in err


def test_without_the_clip_folder_the_error_says_what_to_pass(tmp_path, capsys):
    rc = main(["convert", "lisa", str(FIXTURE / "checkpoint"), str(tmp_path / "out")])
    assert rc == 2
    assert "--vision-tower" in capsys.readouterr().err


def test_a_safetensors_folder_converts_the_same(tmp_path, model):
    """The same checkpoint as one ``model.safetensors`` (no index) gives the same weights."""
    from safetensors.torch import save_file

    from segllm.convert.lisa import convert
    from segllm.convert.source import read_folder_tensors

    src = tmp_path / "checkpoint"
    shutil.copytree(FIXTURE / "checkpoint", src)
    tensors = read_folder_tensors(src)
    for path in [*src.glob("pytorch_model*.bin"), src / "pytorch_model.bin.index.json"]:
        path.unlink()
    save_file({k: v.contiguous() for k, v in tensors.items()}, src / "model.safetensors")
    again, _ = convert(src, vision_tower=FIXTURE / "clip")
    theirs, ours = again.state_dict(), model.state_dict()
    assert set(theirs) == set(ours)
    assert all(torch.equal(theirs[k], ours[k]) for k in ours)


def test_sam_sizes_are_read_from_shapes_for_every_official_sam():
    from segllm.convert.sam_sizes import sam_config_from_shapes
    from segllm.modeling.decoders.sam import SAM_VARIANTS, SAMConfig, build_sam

    for name, sizes in SAM_VARIANTS.items():
        expected = SAMConfig(**sizes)
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in build_sam(expected).state_dict().items()}
        assert sam_config_from_shapes(shapes, name) == expected, name
