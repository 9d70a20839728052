"""GLaMM's official GCG evaluation files (``<split>_gcg_coco_mask_gt.json`` + caption file):
the GranD-f builder reads them in their real layout (it used to stop with KeyError
'tokens_positive'), and ``segllm eval gcg`` scores them; the text model is GLaMM's
bert-base-uncased when it is in the local cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from segllm.data_builders.grandf import GrandfBuilder
from segllm.eval import text_similarity
from segllm.eval.runners import run_gcg
from segllm.eval.text_similarity import FunctionSimilarity
from segllm.records import read_jsonl

FIX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "grandf", "val_test")


@pytest.mark.parametrize("given", ["val_gcg_coco_mask_gt.json", "val_gcg_coco_caption_gt.json"])
def test_official_gcg_files_build_with_glamm_ids_and_index_pairing(tmp_path, given):
    builder = GrandfBuilder(os.path.join(FIX, given), split="val")
    assert builder.format == "gcg-eval"
    stats = builder.build(tmp_path / "val.jsonl")
    records = list(read_jsonl(tmp_path / "val.jsonl", kind="gcg"))
    assert stats.written == 2 and not stats.skipped
    assert [r["id"] for r in records] == ["sa_10010541", "sa_10014079"]
    assert [p["text"] for p in records[0]["phrases"]] == ["A man in a red shirt", "a bag"]
    assert [p["text"] for p in records[1]["phrases"]] == ["Two dogs", "the grass"]
    assert records[1]["phrases"][1]["bbox"] == [0.0, 30.0, 64.0, 18.0]  # the 2nd label has the 2nd mask


def test_official_gcg_file_without_its_pair_is_a_clear_error(tmp_path):
    from segllm.data_builders.coco_format import SourceError

    lone = tmp_path / "test_gcg_coco_mask_gt.json"
    lone.write_text(open(os.path.join(FIX, "val_gcg_coco_mask_gt.json")).read())
    with pytest.raises(SourceError, match="test_gcg_coco_caption_gt.json: file not found"):
        GrandfBuilder(str(lone)).build(tmp_path / "out.jsonl")


def test_eval_gcg_scores_the_official_ground_truth(tmp_path):
    GrandfBuilder(os.path.join(FIX, "val_gcg_coco_mask_gt.json"), split="val").build(tmp_path / "gt.jsonl")
    gt = list(read_jsonl(tmp_path / "gt.jsonl"))
    preds = [{"id": r["id"], "caption": r["caption"], "phrases": [p["text"] for p in r["phrases"]],
              "masks": [p["rle"] for p in r["phrases"]]} for r in gt]
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    exact = FunctionSimilarity(lambda a, b: float(a == b), name="exact match")
    metrics = run_gcg(tmp_path / "gt.jsonl", tmp_path / "out", prediction_file=tmp_path / "pred.jsonl",
                      similarity=exact, captions=False, progress=False)
    assert metrics["n_gt_phrases"] == 4 and metrics["text_similarity_model"] == "exact match"
    assert metrics["matching"]["greedy"]["mask_recall"] == pytest.approx(1.0)


def _tiny_bert(folder):
    """A 1-layer BertModel and a 7-word vocabulary, saved as a local model folder."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "car"]))
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    config = BertConfig(vocab_size=7, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                        intermediate_size=8)
    BertModel(config).save_pretrained(str(folder))


def test_bert_base_uncased_is_the_default_when_cached(tmp_path, monkeypatch):
    import huggingface_hub

    cached = tmp_path / "snapshots" / "abc"
    _tiny_bert(cached)

    def snapshot(repo_id, local_files_only=False, **_):
        assert repo_id == "bert-base-uncased" and local_files_only  # never a download
        return str(cached)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    sim = text_similarity.resolve_text_similarity()
    assert sim.name == f"bert-base-uncased (local: {cached})"
    assert np.isclose(sim.matrix(["red car"], ["red car"])[0, 0], 1.0)

    def missing(repo_id, **_):
        raise huggingface_hub.utils.LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", missing)
    assert text_similarity.local_bert_dir() is None
