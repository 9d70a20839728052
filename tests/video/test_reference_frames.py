"""VISA's reference frames in the LLM: pooled frame tokens, their slots in the conversation,
video records through batching and the objective, the chat session and the video path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segllm.batching import build_batch, collate, encode_sample
from segllm.conversation import ConversationError, Turn, encode_conversation
from segllm.data_builders.video import load_video_set
from segllm.data_builders.video_frames import frame_conversations, reference_frame_indices
from segllm.image_check import ImageCheckError, check_record_images
from segllm.images import InputError
from segllm.modeling.frame_tokens import pool_patches, pooling_grid
from segllm.records import RecordError, validate_conversation
from segllm.train.objective import compute_objective
from segllm.video.frames import open_video
from segllm.video.pipeline import VideoSegmenter
from tests.pipeline.helpers import forcing

from .test_video_frames import REVOS_META

REVOS_FRAMES = "tests/fixtures/revos/JPEGImages/vid_b"


def test_pooling_grid_keeps_the_patch_grids_proportions():
    assert pooling_grid(112, (24, 24)) == (8, 14)  # VISA's 112 on CLIP-336's grid
    assert pooling_grid(4, (4, 4)) == (2, 2)
    assert pooling_grid(16, (16, 16)) == (4, 4)
    with pytest.raises(ValueError, match="tokens_per_frame=7 cannot be laid out.*4 x 4"):
        pooling_grid(7, (4, 4))


def test_pooled_tokens_are_the_means_of_their_cells():
    patches = torch.arange(2 * 16 * 3, dtype=torch.float32).reshape(2, 16, 3)
    pooled = pool_patches(patches, (4, 4), 4)
    grid = patches.reshape(2, 4, 4, 3)
    top_left = grid[:, :2, :2].mean(dim=(1, 2))
    bottom_right = grid[:, 2:, 2:].mean(dim=(1, 2))
    assert torch.allclose(pooled[:, 0], top_left) and torch.allclose(pooled[:, 3], bottom_right)


def test_frame_slots_come_before_the_image_in_round_zero_only(tiny_model):
    ids = tiny_model.config.token_ids
    turns = [Turn("Segment the square.", "Sure, [SEG].", 1), Turn("And now?", "No.", 0)]
    enc = encode_conversation(turns, tiny_model.tokenizer, ids, 16, num_frame_tokens=12)
    frame_at = [i for i, t in enumerate(enc.input_ids) if t == ids["frame"]]
    image_at = [i for i, t in enumerate(enc.input_ids) if t == ids["image"]]
    assert len(frame_at) == 12 and len(image_at) == 16
    assert frame_at == list(range(frame_at[0], frame_at[0] + 12))
    assert frame_at[-1] + 1 == image_at[0]
    with pytest.raises(ConversationError, match="round 0: the question may not contain '<frame>'"):
        encode_conversation([Turn("what <frame>", "x", 0)], tiny_model.tokenizer, ids, 16)


def _video_records(count: int = 2, reference_frames=(2, 3)) -> tuple[list[dict], object]:
    data = load_video_set("revos", REVOS_META)
    records, _ = frame_conversations(data, frames_per_expression=2, seed=0, split="train",
                                     reference_frames=reference_frames)
    with_target = [r for r in records if r["rounds"][0]["targets"]][:count]
    return with_target, data.meta_path.parent


def _load(record, root):
    from segllm.images import load_image

    image = load_image(root / record["image"], orientation="stored")
    frames = [load_image(root / p, orientation="stored") for p in record["reference_frames"]]
    return image, frames


def test_reference_frames_are_drawn_with_the_target_and_do_not_move_the_targets():
    import random

    rng = random.Random(0)
    picks = reference_frame_indices(10, 7, 4, rng)
    assert len(picks) == 4 and 7 in picks and picks == sorted(set(picks))
    assert reference_frame_indices(3, 1, 12, rng) == [0, 1, 2]
    assert reference_frame_indices(10, 7, 0, rng) == []
    with_frames, _ = _video_records(count=10)
    without, _ = _video_records(count=10, reference_frames=(0, 0))
    assert [r["image"] for r in with_frames] == [r["image"] for r in without]
    assert all("reference_frames" not in r for r in without)
    for record in with_frames:
        validate_conversation(record)
        assert 2 <= len(record["reference_frames"]) <= 3
        assert record["image"] in record["reference_frames"]


def test_video_records_train_through_the_objective_with_frame_tokens(tiny_model):
    records, root = _video_records()
    per_frame = tiny_model.config.video.tokens_per_frame
    samples = []
    for record in records:
        image, frames = _load(record, root)
        samples.append(encode_sample(record, np.asarray(image), tiny_model.tokenizer,
                                     tiny_model.config, reference_frames=frames))
    batch = collate(samples, tiny_model.config.token_ids["pad"])
    counts = [len(r["reference_frames"]) for r in records]
    assert batch.frame_counts == counts and len(batch.frame_pixel_values) == sum(counts)
    slots = (batch.input_ids == tiny_model.config.token_ids["frame"]).sum(dim=1).tolist()
    assert slots == [n * per_frame for n in counts]
    tiny_model.train()
    try:
        out = compute_objective(tiny_model, batch)
        assert torch.isfinite(out.loss) and out.num_masks == len(records)
        out.loss.backward()
        projector = tiny_model.llava.model.multi_modal_projector.linear_1.weight
        assert projector.grad is not None and projector.grad.abs().sum() > 0
    finally:  # the package's model is shared with the inference tests
        tiny_model.zero_grad(set_to_none=True)
        tiny_model.eval()


def test_the_llm_sees_the_reference_frames(tiny_model):
    """Other reference frames, other hidden states at the target's [SEG]."""
    (record,), root = _video_records(count=1)
    image, frames = _load(record, root)
    tiny_model.eval()
    states = []
    for shown in (frames, [frame.transpose(0) for frame in frames]):  # mirrored frames
        sample = encode_sample(record, np.asarray(image), tiny_model.tokenizer,
                               tiny_model.config, reference_frames=shown)
        batch = collate([sample], tiny_model.config.token_ids["pad"])
        with torch.no_grad():
            states.append(tiny_model(**batch.model_inputs()).seg_embeddings[0])
    assert not torch.allclose(states[0], states[1])


def test_a_video_record_is_refused_by_a_model_without_frame_tokens(tiny_model):
    (record,), root = _video_records(count=1)
    image, frames = _load(record, root)
    config = tiny_model.config.with_overrides(**{"video.tokens_per_frame": 0})
    with pytest.raises(ConversationError, match="model takes none"):
        encode_sample(record, np.asarray(image), tiny_model.tokenizer, config,
                      reference_frames=frames)
    with pytest.raises(ConversationError, match=r"lists \d reference frame\(s\) but 0 were"):
        build_batch([(record, np.asarray(image))], tiny_model.tokenizer, tiny_model.config)


def test_bad_reference_frames_are_named(tmp_path):
    (record,), root = _video_records(count=1)
    bad = dict(record, reference_frames=["/abs/00000.jpg"])
    with pytest.raises(RecordError, match=r"field 'reference_frames\[0\]': absolute path"):
        validate_conversation(bad)
    wrong_size = dict(record, reference_frames=[record["image"], "small.png"])
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "small.png")
    (tmp_path / "JPEGImages").symlink_to(root / "JPEGImages")
    with pytest.raises(ImageCheckError, match="reference frame .*small.png is 8x8"):
        check_record_images("v.jsonl", [wrong_size], tmp_path)


def test_augmentation_is_refused_for_video_records(tmp_path):
    from segllm.train.args import SourceArgs
    from segllm.train.augment import AugmentArgs
    from segllm.train.data import ConversationSource

    records, root = _video_records()
    path = tmp_path / "video-frames.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    source = ConversationSource.from_args(SourceArgs(path=str(path), image_root=str(root)))
    frames = source.load_reference_frames(source.records[0])
    assert len(frames) == len(records[0]["reference_frames"])
    with pytest.raises(ValueError, match="turn augment off"):
        ConversationSource.from_args(SourceArgs(path=str(path), image_root=str(root),
                                                augment=AugmentArgs(hflip=0.5)))


def test_session_feeds_reference_frames_once_and_the_pipeline_uses_them(pipeline):
    frames = open_video(REVOS_FRAMES)
    refs = [frames.frame(0), frames.frame(3)]
    session = pipeline.start(frames.frame(1), orientation="stored", reference_frames=refs)
    session.ask("Segment the square.", answer="Sure, [SEG].")
    session.ask("And the other one?", answer="No.")
    frame_id = pipeline.token_ids["frame"]
    assert session.token_ids.count(frame_id) == 2 * pipeline.config.video.tokens_per_frame
    plain = pipeline.start(frames.frame(1), orientation="stored")
    plain.ask("Segment the square.", answer="Sure, [SEG].")
    assert plain.token_ids.count(frame_id) == 0
    # a session that recomputes every round feeds the same frames again, same answer
    again = pipeline.start(frames.frame(1), orientation="stored", reference_frames=refs,
                           reuse_cache=False)
    again.ask("Segment the square.", answer="Sure, [SEG].")
    reply = again.ask("And the other one?", answer="No.")
    assert reply.text == "No." and again.token_ids == session.token_ids

    segmenter = VideoSegmenter(pipeline, num_candidates=2, num_global=2, num_local=1,
                               generation=forcing(pipeline, "Sure, [SEG]."))
    result = segmenter.segment(frames, "the square")
    assert result.reference_frames_in_llm
    assert result.target.reference_frames == result.reference_frames
    assert result.target.index in result.reference_frames


def test_frames_for_a_model_that_takes_none_are_refused(tiny_model):
    from segllm.modeling.model import SegLLMModel
    from segllm.pipeline import SegLLMPipeline

    config = tiny_model.config.with_overrides(**{"video.tokens_per_frame": 0})
    pipe = SegLLMPipeline(SegLLMModel.from_config(config, tokenizer=tiny_model.tokenizer))
    frames = open_video(REVOS_FRAMES)
    with pytest.raises(InputError, match="this model takes none"):
        pipe.start(frames.frame(0), orientation="stored", reference_frames=[frames.frame(1)])
    assert not pipe.takes_reference_frames


def test_an_impossible_pooling_count_is_refused_at_build():
    from segllm.config import SegLLMConfig
    from segllm.modeling.model import SegLLMModel

    with pytest.raises(ValueError, match="tokens_per_frame=5 cannot be laid out"):
        SegLLMModel.from_config(SegLLMConfig.from_name("tiny", **{"video.tokens_per_frame": 5}))


def test_pooling_matches_adaptive_pooling_of_the_image_grid():
    grid = torch.randn(1, 3, 6, 6)
    patches = grid.flatten(2).transpose(1, 2)
    expected = F.adaptive_avg_pool2d(grid, (2, 3)).flatten(2).transpose(1, 2)
    assert torch.allclose(pool_patches(patches, (6, 6), 6), expected)
