"""eval/image_token_probe.py: which words the image tokens carry, per patch."""

from __future__ import annotations

import json

import numpy as np
import torch

from segllm.config import SegLLMConfig
from segllm.data_builders import synthetic
from segllm.eval.image_token_probe import GROUPS, main, probe, shape_words, word_vectors
from segllm.modeling.model import SegLLMModel


def _tiny():
    torch.manual_seed(0)
    return SegLLMModel.from_config(SegLLMConfig.from_name("tiny")).eval()


def test_tokens_that_sit_on_their_shapes_words_are_read_right():
    """Tokens made of the right words' vectors score 100 % in every group."""
    model = _tiny()
    vectors = {g: word_vectors(model, words) for g, words in GROUPS.items()}

    def perfect(model, record, image, grid=8):
        seed, index = (int(x) for x in record["id"].split("-")[1:])
        scene = synthetic.conversation_at(seed, index)[1]
        cell = image.shape[0] // grid
        tokens = torch.zeros(grid * grid, vectors["colour"].shape[1])
        for t in range(grid * grid):
            r, c = divmod(t, grid)
            window = (slice(r * cell, (r + 1) * cell), slice(c * cell, (c + 1) * cell))
            # the shape holding most of the patch, a part's pixels its own
            share = [s.mask[window].sum() - sum(scene.shapes[s.child].mask[window].sum()
                                                for _ in [0] if s.child is not None)
                     for s in scene.shapes]
            shape = scene.shapes[int(np.argmax(share))]
            for g, w in shape_words(scene, shape).items():
                if w is not None:
                    tokens[t] += vectors[g][GROUPS[g].index(w)]
        return tokens

    report = probe(model, scenes=6, seed=3, tokens_of=perfect)
    assert all(report[g]["right"] == 1.0 and report[g]["tokens"] > 5 for g in GROUPS), report
    assert report["kind"]["chance"] == 1 / 6


def test_the_cli_on_a_saved_model(tmp_path, capsys):
    model = _tiny()
    model.save_pretrained(tmp_path / "m")
    assert main([str(tmp_path / "m"), "--scenes", "3", "--output", str(tmp_path / "p.json")]) == 0
    report = json.loads((tmp_path / "p.json").read_text())
    assert set(report) == set(GROUPS) and report == json.loads(capsys.readouterr().out)
    assert all(0 <= v["right"] <= 1 and v["tokens"] > 0 for v in report.values())
    assert main([str(tmp_path / "missing")]) == 2
    assert np.isclose(report["row"]["chance"], 0.5)
