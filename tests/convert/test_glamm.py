"""``segllm convert glamm`` against outputs of GLaMM's own code (tests/fixtures/convert/glamm/).

The fixture is a tiny GLaMM built, saved and run by mbzuai-oryx/groundingLMM's classes under
transformers 4.31 (tools/make_glamm_fixture.py, tools/CONVERT_VERSIONS.md): its checkpoint
folder (no region encoder: their code fixes its sizes at 7B, see the script), the CLIP folder
it names (336 px), and their token ids, pixels, logits, [SEG] masks and a greedy continuation
for one image and question in their app.py prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from segllm.cli import main
from segllm.conversation import Turn, encode_conversation

FIXTURE = Path(__file__).parents[1] / "fixtures" / "convert" / "glamm"
IMAGE_TOKEN_INDEX = -200  # GLaMM's stand-in id for the image in its token ids


@pytest.fixture(scope="module")
def reference():
    return (load_file(FIXTURE / "reference.safetensors"),
            json.loads((FIXTURE / "reference.json").read_text()))


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("glamm") / "model"
    rc = main(["convert", "glamm", str(FIXTURE / "checkpoint"), str(out),
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


def test_config_is_glammss(model, reference):
    _, meta = reference
    cfg = model.config
    assert cfg.name == "glamm-7b" and cfg.prompt_template == "glamm"
    assert cfg.vision.image_size == 336 and cfg.vision.num_image_tokens == 576
    assert cfg.projector.kind == "mlp" and cfg.mask_encoder.enabled is False
    assert cfg.region_encoder.enabled is False  # the tiny checkpoint has none (docstring)
    assert cfg.token_ids["seg"] == meta["token_ids"]["seg"]
    assert cfg.token_ids["phrase_start"] == meta["token_ids"]["bop"]
    assert cfg.token_ids["phrase_end"] == meta["token_ids"]["eop"]


def test_template_and_tokenizer_give_glamms_ids(model, reference):
    tensors, meta = reference
    cfg = model.config
    enc = encode_conversation([Turn(meta["question"], meta["answer"], num_targets=1)],
                              model.tokenizer, cfg.token_ids, cfg.vision.num_image_tokens,
                              template=cfg.prompt_template)
    theirs = expand_image(tensors["input_ids"].tolist(), cfg.token_ids["image"],
                          cfg.vision.num_image_tokens)
    assert enc.input_ids == theirs


def test_logits_and_masks_match_glamm(model, reference):
    tensors, meta = reference
    ids = expand_image(tensors["input_ids"].tolist(), model.config.token_ids["image"],
                       model.config.vision.num_image_tokens)
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                    pixel_values=tensors["clip_pixel_values"].float(),
                    decoder_pixel_values=tensors["sam_pixel_values"],
                    decoder_input_sizes=[tuple(meta["sam_input_size"])],
                    original_sizes=[tuple(tensors["pred_masks"].shape[-2:])])
    text = tensors["text_positions"]
    vocab = tensors["logits"].shape[-1]
    torch.testing.assert_close(out.logits[0, text, :vocab], tensors["logits"], atol=1e-4,
                               rtol=1e-4)
    torch.testing.assert_close(out.hidden_states[0, text], tensors["last_hidden_state"],
                               atol=1e-4, rtol=1e-4)
    assert out.mask_logits[0].shape == tensors["pred_masks"].shape
    torch.testing.assert_close(out.mask_logits[0], tensors["pred_masks"], atol=1e-4, rtol=1e-4)


def test_greedy_continuation_matches_glamm(model, reference):
    tensors, meta = reference
    prompt = meta["prompt_ids"]
    ids = expand_image(prompt, model.config.token_ids["image"], model.config.vision.num_image_tokens)
    new = []
    with torch.no_grad():
        for _ in range(8):
            input_ids = torch.tensor([ids + new])
            embeds = model.embed_inputs(input_ids,
                                        pixel_values=tensors["clip_pixel_values"].float())
            hidden = model.language_model(inputs_embeds=embeds).last_hidden_state
            new.append(int(model.llava.lm_head(hidden[0, -1]).argmax()))
    assert new == tensors["generated_ids"].tolist()[len(prompt):]


def test_chat_pipeline_uses_glamms_prompt(converted, reference):
    from segllm.pipeline import SegLLMPipeline

    tensors, meta = reference
    pipe = SegLLMPipeline.from_pretrained(converted, dtype="fp32")
    session = pipe.start(str(FIXTURE / "image.png"))
    reply = session.ask(meta["question"])
    assert all(m.shape == (48, 80) for m in reply.masks)
    prompt = expand_image(meta["prompt_ids"], pipe.token_ids["image"], 576)
    assert session.token_ids[:len(prompt)] == prompt


def test_report_accounts_for_every_tensor(converted):
    report = json.loads((converted / "convert_report.json").read_text())
    ckpt = report["checkpoint"]
    dropped = [k for keys in ckpt["dropped"].values() for k in keys]
    assert ckpt["mapped"] + len(dropped) == ckpt["tensors"]
    assert all(k.endswith("rotary_emb.inv_freq") for k in dropped)
    assert report["preset"] == "glamm-7b" and report["region_encoder"] is False


def test_a_lisa_checkpoint_is_refused_naming_the_architecture(tmp_path, capsys):
    lisa = FIXTURE.parent / "lisa"
    rc = main(["convert", "glamm", str(lisa / "checkpoint"), str(tmp_path / "out"),
               "--vision-tower", str(lisa / "clip")])
    assert rc == 2
    assert "LISAForCausalLM" in capsys.readouterr().err


def test_grounded_captions_give_glamms_ids(model, reference):
    """segllm's GCG answers (``<p>phrase</p> [SEG]``) tokenize as GLaMM's own
    (``<p> phrase </p> [SEG]``, GranDf_gcg_ds.py) did under their slow tokenizer."""
    from segllm.grounding import grounded_answer

    _, meta = reference
    caption = "A red circle left of a blue square."
    ours = grounded_answer(caption, [{"span": [2, 12]}, {"span": [21, 34]}])
    ids = model.tokenizer(ours, add_special_tokens=False)["input_ids"]
    assert ids == meta["gcg_answer_ids"]
