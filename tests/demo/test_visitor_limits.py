"""What a visitor of the web demo may cost: images kept no larger than the model needs, a
dropped chat's files (its mask zip included) deleted, idle chats expired, gradio's cache aged
out, and a visitor whose chat was dropped told so."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gradio")


@pytest.fixture()
def fresh(demo, tmp_path):
    """The module's demo with its limits restored after the test."""
    saved = demo.max_sessions, demo.session_ttl
    yield demo
    demo.max_sessions, demo.session_ttl = saved


def held_bytes(session) -> int:
    """What a chat session keeps per visitor: its image, tensors and every round's masks."""
    total = session.image.width * session.image.height * 3
    total += sum(v.numel() * v.element_size() for v in vars(session).values()
                 if isinstance(v, torch.Tensor))
    return total + sum(m.nbytes for reply in session.history for m in reply.masks)


def test_a_large_upload_is_kept_no_larger_than_needed(demo, tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (2000, 1500), (200, 30, 30)).save(path)  # 2000x1500 in a ~10 KB file
    assert path.stat().st_size < 50_000
    key, _, _, _, _, status, _ = demo.upload(str(path), None)
    assert status.startswith("Image loaded (2000x1500, kept at 1024x768).")
    demo.ask("Segment the red square.", key)
    session = demo._chats[key].session
    assert session.image.size == (1024, 768) and session.history[0].masks[0].shape == (768, 1024)
    # before: the full 2000x1500 image, the model's copy of it and 3 MB masks (~21 MB a chat)
    assert held_bytes(session) < 6 * 2**20


def test_the_kept_side_never_drops_below_the_models_inputs(demo):
    from segllm.demo.app import SegLLMDemo, fit_within, model_input_side

    assert model_input_side(demo.pipeline) == 64  # the tiny preset's mask decoder input
    assert SegLLMDemo(demo.pipeline, max_side=16, output_root=demo.output_root).max_side == 64
    small = Image.new("RGB", (64, 48))
    assert fit_within(small, 64) is small
    assert fit_within(Image.new("RGB", (300, 100)), 64).size == (64, 21)


def test_a_dropped_chat_takes_its_zip_and_files_with_it(fresh, image_file):
    fresh.max_sessions = 2
    keys = []
    for _ in range(3):
        keys.append(fresh.upload(str(image_file), None)[0])
        download = fresh.ask("Segment the red square.", keys[-1])[2]
        assert os.path.dirname(download) == str(fresh.output_root / keys[-1])
    # before: every chat's "<key>-masks.zip" stayed beside the folders, evicted or not
    assert {p.name for p in fresh.output_root.iterdir()} >= set(keys[1:])
    assert keys[0] not in {p.name for p in fresh.output_root.iterdir()}
    assert not list(fresh.output_root.glob("*.zip"))
    fresh.upload(str(image_file), keys[2])  # a new image: the old chat is dropped at once
    assert not (fresh.output_root / keys[2]).exists()


def test_a_visitor_whose_chat_was_dropped_is_told_it_expired(fresh, image_file):
    fresh.max_sessions = 1
    old = fresh.upload(str(image_file), None)[0]
    fresh.ask("Segment the red square.", old)
    fresh.upload(str(image_file), None)  # another visitor: the first chat is evicted
    expired = [fresh.ask("Segment it.", old)[3], fresh.undo(old)[3],
               fresh.refer(0, "q", None, old)[1], fresh.click_image(3, 3, old)[1],
               fresh.insert_region("q", None, old)[1], fresh.clear_box(old)[1]]
    for status in expired:  # before: "Upload an image first.", as if nothing had happened
        assert status.startswith("**Your chat expired** and its rounds are gone")
        assert "at most 1 chats at a time" in status and "Upload the image again" in status
    assert fresh.ask("Segment it.", old)[:3] == ([], [], None)  # the lost rounds are cleared
    assert fresh.ask("Segment it.", None)[3] == "Upload an image first."


def test_idle_chats_expire_with_their_files_but_not_while_in_use(fresh, image_file):
    fresh.session_ttl = 60
    key = fresh.upload(str(image_file), None)[0]
    fresh.ask("Segment the red square.", key)
    with fresh._using(key):  # an event running on it: kept
        fresh.expire_idle(now=time.monotonic() + 61)
    assert key in fresh._chats
    fresh.expire_idle(now=time.monotonic() + 30)  # idle for less than the ttl: kept
    assert key in fresh._chats
    assert fresh.expire_idle(now=time.monotonic() + 61) >= 1
    assert key not in fresh._chats and not (fresh.output_root / key).exists()
    assert fresh.ask("Segment it.", key)[3].startswith("**Your chat expired**")


def test_the_least_recently_used_chat_is_the_one_evicted(fresh, image_file):
    fresh.max_sessions = 2
    first, second = (fresh.upload(str(image_file), None)[0] for _ in range(2))
    fresh.ask("Segment the red square.", first)  # the first visitor is active again
    fresh.upload(str(image_file), None)
    assert first in fresh._chats and second not in fresh._chats


def test_gradios_cache_is_limited_and_its_empty_folders_pruned(demo, tmp_path):
    from segllm.demo.app import SegLLMDemo

    blocks = demo.build()
    assert blocks.delete_cache == demo.cache_schedule() == (450, 1800)
    cache = tmp_path / "gradio"
    owned = SegLLMDemo(demo.pipeline, session_ttl=8, output_root=tmp_path / "chats",
                       cache_dir=cache)
    assert owned.cache_schedule() == (2, 8)
    old_empty, new_empty, old_full = ("0" * 64, "1" * 64, "2" * 64)  # gradio's SHA-256 names
    (cache / old_empty).mkdir(parents=True)
    (cache / new_empty).mkdir()
    (cache / old_full).mkdir()
    (cache / old_full / "upload.png").write_bytes(b"x")
    (cache / "vibe_edit_history").mkdir()  # a folder of gradio's own: not a cached file's
    (cache / "tmp_left_by_an_upload").write_bytes(b"")  # gradio's parser leaves one per upload
    (cache / "tmp_being_written").write_bytes(b"")
    (cache / "tmp_with_bytes").write_bytes(b"x")
    for name in (old_empty, old_full, "tmp_left_by_an_upload", "tmp_with_bytes",
                 "vibe_edit_history"):
        os.utime(cache / name, (time.time() - 3, time.time() - 3))
    assert owned.prune_cache() == 2
    assert sorted(p.name for p in cache.iterdir()) == sorted([
        new_empty, old_full, "tmp_being_written", "tmp_with_bytes", "vibe_edit_history"])
    # a cache folder the demo was not given (gradio's shared one) is never touched
    assert SegLLMDemo(demo.pipeline, output_root=tmp_path / "other").prune_cache() == 0


def test_the_sweeper_expires_chats_in_the_background(demo, image_file, tmp_path):
    from segllm.demo.app import SegLLMDemo

    quick = SegLLMDemo(demo.pipeline, generation=demo.generation, session_ttl=0.2,
                       output_root=tmp_path / "chats")
    key = quick.upload(str(image_file), None)[0]
    quick.start_sweeper(period=0.05)
    try:
        deadline = time.monotonic() + 10
        while key in quick._chats and time.monotonic() < deadline:
            time.sleep(0.05)
        assert key not in quick._chats and not (tmp_path / "chats" / key).exists()
    finally:
        quick.close()
    assert not quick._sweeper.is_alive()
    own = SegLLMDemo(demo.pipeline)  # a temp folder of its own: gone once closed
    own.close()
    assert not own.output_root.exists() and (tmp_path / "chats").is_dir()


@pytest.mark.parametrize("option", ["--session-ttl", "--max-sessions", "--max-side"])
def test_serve_refuses_limits_that_are_not_positive(option, capsys):
    from segllm import cli

    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["serve", option, "0"])
    assert exit_.value.code == 2 and "must be above 0, got 0" in capsys.readouterr().err
    args = cli.build_parser().parse_args(["serve"])
    assert (args.session_ttl, args.max_side, args.max_sessions) == (1800.0, 1024, 32)


def test_a_chats_rounds_and_zip_stay_in_its_own_folder(demo, image_file):
    key = demo.upload(str(image_file), None)[0]
    download = demo.ask("Segment the red square.", key)[2]
    folder = demo.output_root / key
    assert download == str(folder / "segllm-masks.zip")
    assert sorted(p.name for p in folder.iterdir()) == ["rounds", "segllm-masks.zip"]
    assert np.asarray(Image.open(folder / "rounds" / "round_00" / "overlay.png")).size
