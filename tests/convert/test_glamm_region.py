"""GLaMM's region input in segllm: a box through the region encoder into the ``<bbox>`` slot.

The module itself was compared with GLaMM's ``MLVLROIQueryModule`` by
``tools/make_glamm_fixture.py --region-check`` (their code fixes it at 7B size, too big for a
fixture; tools/CONVERT_VERSIONS.md). Here: the CLIP layers it reads, its batching, and its
wiring through the model, the session and ``segllm chat --box`` on the converted tiny GLaMM
with a tiny region encoder added.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from segllm.cli import main
from segllm.modeling.region_encoder import RegionEncoder, clip_levels

FIXTURE = Path(__file__).parents[1] / "fixtures" / "convert" / "glamm"
TINY_REGION = {"enabled": True, "num_levels": 2, "layer_step": 1, "num_fuse": 2, "roi_size": 2,
               "query_dim": 16, "box_hidden": 8, "norm_groups": 8}


def test_clip_levels_are_glamms_layers():
    """GLaMM: ``hidden_states[select::-3][::-1][-4:]`` with select -2 on CLIP-L (25 states)."""
    states = tuple(torch.full((1, 2, 1), float(i)) for i in range(25))
    levels = clip_levels(states, last_layer=-2, num_levels=4, step=3)
    theirs = states[-2::-3][::-1][-4:]
    assert [int(x[0, 0, 0]) for x in levels] == [int(x[0, 0, 0]) for x in theirs] == \
        [14, 17, 20, 23]
    assert all(x.shape == (1, 1, 1) for x in levels)  # CLS dropped
    with pytest.raises(ValueError, match="do not fit"):
        clip_levels(states[:5], last_layer=-2, num_levels=4, step=3)


def test_boxes_of_two_images_are_read_from_their_own_image():
    torch.manual_seed(0)
    enc = RegionEncoder(feature_dim=32, out_dim=12, patch_size=14, num_levels=2, num_fuse=1,
                        roi_size=2, query_dim=16, box_hidden=8, norm_groups=8).eval()
    levels = [torch.randn(2, 16, 32) for _ in range(2)]
    a, b = torch.tensor([[0.1, 0.1, 0.3, 0.4]]), torch.tensor([[0.0, 0.2, 0.2, 0.3],
                                                              [0.1, 0.1, 0.3, 0.4]])
    with torch.no_grad():
        both = enc(levels, [a, b])
        first = enc([x[:1] for x in levels], [a])
        second = enc([x[1:] for x in levels], [b])
    assert [t.shape for t in both] == [(1, 12), (2, 12)]
    torch.testing.assert_close(both[0], first[0])
    torch.testing.assert_close(both[1], second[0])
    assert not torch.allclose(both[0][0], both[1][1])  # same box, other image's features


@pytest.fixture(scope="module")
def region_model_dir(tmp_path_factory) -> Path:
    """The converted tiny GLaMM plus a tiny region encoder (random) and its <bbox> slot."""
    from segllm.convert.glamm import convert
    from segllm.modeling.model import SegLLMModel

    base, _ = convert(FIXTURE / "checkpoint", vision_tower=FIXTURE / "clip")
    region_id = base.tokenizer.convert_tokens_to_ids("<bbox>")
    config = base.config.with_overrides(region_encoder=TINY_REGION,
                                        token_ids={**base.config.token_ids, "region": region_id})
    torch.manual_seed(0)
    model = SegLLMModel(config)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("region_encoder.") for k in missing)
    model.tokenizer = base.tokenizer
    out = tmp_path_factory.mktemp("glamm_region") / "model"
    model.save_pretrained(out)
    return out


def test_a_box_becomes_the_region_encoders_token(region_model_dir):
    from segllm.pipeline import SegLLMPipeline

    pipe = SegLLMPipeline.from_pretrained(region_model_dir, dtype="fp32")
    model, bbox = pipe.model, pipe.token_ids["region"]
    session = pipe.start(str(FIXTURE / "image.png"))
    session.ask("What is in <region>?", regions=[[8, 12, 24, 20]])
    ids = session.token_ids
    assert ids.count(bbox) == 1
    assert pipe.token_ids["mask_crop"] not in ids  # no mask-encoder slots for the region
    # the slot holds the region encoder's token of the box x1y1x2y2 / (W, H)
    pixels = session._clip_pixels[None]
    box = torch.tensor([[8 / 80, 12 / 48, 32 / 80, 32 / 48]])
    at = ids.index(bbox)
    with torch.no_grad():
        embeds = model.embed_inputs(torch.tensor([ids[:at + 1]]), pixel_values=pixels,
                                    region_boxes=[box])
        hidden = model.llava.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        levels = clip_levels(hidden, last_layer=-2, num_levels=2, step=1)
        token = model.region_encoder(levels, [box])[0][0]
    torch.testing.assert_close(embeds[0, at], token)
    # the next round reuses the cache; a second region is read from the cached image
    reply = session.ask("And <region>?", regions=[[40, 5, 30, 30]])
    assert session.token_ids.count(bbox) == 2 and isinstance(reply.text, str)


def test_a_region_slot_without_a_box_is_an_error(region_model_dir):
    from segllm.modeling.model import SegLLMModel

    model = SegLLMModel.from_pretrained(region_model_dir).eval()
    ids = torch.tensor([[1, model.config.token_ids["region"], 5]])
    with pytest.raises(ValueError, match="1 region slot"):
        model.embed_inputs(ids)


def test_chat_box_option(region_model_dir, tmp_path, capsys):
    script = tmp_path / "q.txt"
    script.write_text("Describe <region> please.\n")
    rc = main(["chat", "--model", str(region_model_dir), "--image",
               str(FIXTURE / "image.png"), "--script", str(script), "--box", "8,12,24,20",
               "--out", str(tmp_path / "out"), "--max-new-tokens", "4"])
    assert rc == 0
    saved = json.loads(next((tmp_path / "out").rglob("masks.json")).read_text())
    assert saved["question"] == "Describe <region> please."
    with pytest.raises(SystemExit) as exit_info:
        main(["chat", "--image", str(FIXTURE / "image.png"), "--box", "8,12,0,20"])
    assert exit_info.value.code == 2
    assert "positive width" in capsys.readouterr().err
