"""Caption-metric input checks and the packaged MiniLM text similarity.

METEOR / CIDEr values (Java) are checked end to end in test_runners.py, to start the JVM once."""

from __future__ import annotations

import numpy as np
import pytest

from segllm.eval.caption_metrics import caption_scores
from segllm.eval.text_similarity import MINILM_NAME, resolve_text_similarity


def test_caption_ids_must_match():
    with pytest.raises(ValueError, match="same ids"):
        caption_scores({"a": ["x"]}, {"b": "x"})


@pytest.mark.slow  # loads transformers and the 90 MB MiniLM
def test_packaged_minilm_similarity():
    sim = resolve_text_similarity()
    assert sim.name == MINILM_NAME
    m = sim.matrix(["a red car", "a dog on the grass"], ["a red automobile", "a red car", "a dog on the grass"])
    assert m.shape == (2, 3)
    assert m[0, 1] == pytest.approx(1.0, abs=1e-5) and m[1, 2] == pytest.approx(1.0, abs=1e-5)
    assert m[0, 0] > 0.8 > 0.5 > m[0, 2]  # paraphrase passes GLaMM's 0.5, an unrelated phrase does not
    # batching with padding gives each phrase the embedding it gets alone
    alone = sim.embed(["a red car"])
    sim._cache.clear()
    batched = sim.embed(["a dog on the grass and a very long tail of words", "a red car"])[1:]
    np.testing.assert_allclose(alone, batched, rtol=1e-4, atol=1e-5)


def test_bert_dir_must_be_a_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_text_similarity(tmp_path)
