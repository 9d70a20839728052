"""The demo's event handlers, without a browser."""

from __future__ import annotations

import zipfile

import pytest
from PIL import Image

pytest.importorskip("gradio")


def test_upload_two_rounds_undo_and_download(demo, image_file):
    key, preview, chat, gallery, download, status, offered = demo.upload(str(image_file), None)
    assert key and chat == [] and gallery == [] and download is None and offered == []
    assert preview.size == (64 * 11, 48 * 11)  # shown enlarged (whole factor) to >= 512 px
    assert status.startswith("Image loaded (64x48)")
    chat, gallery, download, status, box, _ = demo.ask("Segment the red square.", key)
    assert status == "Round 0: 1 mask(s)." and box == ""
    chat, gallery, download, status, _, _ = demo.ask("Segment the shape right of <ref:0>.", key)
    assert status == "Round 1: 1 mask(s)."
    assert [m["role"] for m in chat] == ["user", "assistant"] * 2
    assert chat[2]["content"] == "[1] Segment the shape right of &lt;ref:0&gt;."
    assert chat[3]["content"] == "Sure, [SEG]."
    assert [caption for _, caption in gallery] == ["round 0: Sure, [SEG].", "round 1: Sure, [SEG]."]
    overlay = Image.open(gallery[1][0])
    assert overlay.size == (64 * 8, 48 * 8)  # enlarged to a 384 px shorter side for the labels
    with zipfile.ZipFile(download) as archive:
        names = set(archive.namelist())
    assert {"round_00/mask_0.png", "round_00/masks.json", "round_00/overlay.png",
            "round_01/mask_0.png", "round_01/masks.json", "round_01/overlay.png"} <= names
    chat, gallery, download, status, _ = demo.undo(key)
    assert status == "Undid round 1." and len(chat) == 2 and len(gallery) == 1
    with zipfile.ZipFile(download) as archive:
        assert not any(n.startswith("round_01") for n in archive.namelist())


@pytest.mark.parametrize("content, message", [
    (b"just some text", "is not an image PIL can read"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 300_000, "the limit is 0 MiB"),
])
def test_bad_uploads_get_a_message(demo, tmp_path, content, message):
    path = tmp_path / "upload.png"
    path.write_bytes(content)
    key, preview, chat, gallery, download, status, _ = demo.upload(str(path), None)
    assert key is None and preview is None
    assert status.startswith("**Refused:**") and message in status


def test_too_many_pixels_and_questions_before_an_image(demo, tmp_path):
    path = tmp_path / "wide.png"
    Image.new("L", (2100, 2000)).save(path)  # 4.2 M pixels, a tiny file
    status = demo.upload(str(path), None)[5]
    assert "2100x2000 = 4 M pixels; the limit is 4 M pixels" in status
    assert demo.ask("Segment it.", None)[3] == "Upload an image first."
    assert demo.undo(None)[3] == "Upload an image first."


def test_a_refused_question_keeps_the_chat(demo, image_file):
    key = demo.upload(str(image_file), None)[0]
    demo.ask("Segment the red square.", key)
    chat, gallery, _, status, box, _ = demo.ask("Segment <ref:3>.", key)
    assert "refers to round 3, which does not exist" in status and box == "Segment <ref:3>."
    assert len(chat) == 2 and len(gallery) == 1
    chat, _, _, status, _, _ = demo.ask("   ", key)
    assert "the question is empty" in status
    assert demo.ask("And <ref:0>?", key)[3] == "Round 1: 1 mask(s)."


def test_old_sessions_are_dropped_past_the_limit(demo, image_file):
    demo.max_sessions = 2
    keys = [demo.upload(str(image_file), None)[0] for _ in range(3)]
    assert demo.ask("Segment it.", keys[0])[3].startswith("**Your chat expired**")
    assert demo.ask("Segment it.", keys[2])[3] == "Round 0: 1 mask(s)."
    assert not (demo.output_root / keys[0]).exists()
    demo.max_sessions = 32


def test_serve_arguments_and_blocks_build(demo):
    from segllm import cli

    args = cli.build_parser().parse_args(["serve", "--model", "m", "--max-file-mb", "2",
                                          "--load-in-4bit", "--port", "7999"])
    assert (args.max_file_mb, args.load_in_4bit, args.port) == (2.0, True, 7999)
    assert cli.build_parser().parse_args(["serve"]).model is None  # the shipped model
    blocks = demo.build()
    ids = {c.elem_id for c in blocks.blocks.values() if getattr(c, "elem_id", None)}
    assert {"upload", "question", "send", "undo", "overlays", "status", "chat", "download",
            "preview", "scenes", "suggestions", "insert-region", "clear-box", "video",
            "video-file", "video-query", "video-send", "video-overlay", "video-masks",
            "video-status"} <= ids


def test_serve_without_a_model_says_where_it_looked(tmp_path, monkeypatch, capsys):
    from segllm import cli

    monkeypatch.setenv("SEGLLM_MODEL", str(tmp_path / "nowhere"))
    assert cli.main(["serve"]) == 2
    assert "no --model given and the shipped model is not at" in capsys.readouterr().err


def test_demo_serve_hands_the_resolved_model_to_serve(tmp_path, monkeypatch):
    from segllm import cli
    from segllm.demo import app

    (tmp_path / "segllm_config.json").write_text("{}")
    monkeypatch.setenv("SEGLLM_MODEL", str(tmp_path))
    seen = []
    monkeypatch.setattr(app, "run", lambda args: seen.append(args) or 0)
    assert cli.main(["demo", "--serve", "--port", "7001"]) == 0
    assert seen[0].model == str(tmp_path) and seen[0].port == 7001


def test_an_example_scene_starts_a_chat_and_suggests_its_questions(demo):
    scene = demo.scenes[0]
    questions = [rnd["question"] for rnd in scene["rounds"]]
    assert len(demo.scenes) == 6 and demo.scene_samples()[0][0].endswith("images/000000.png")
    key, preview, chat, gallery, download, status, offered = demo.load_scene(0, None)
    assert status.startswith("Scene 0 loaded (64x64).") and preview.size == (512, 512)
    assert offered[0] == questions[0] and len(offered) == 4
    assert not any("<ref:" in q for q in offered)  # nothing to refer to yet
    status, offered = demo.ask(questions[0], key)[3::2]
    assert "IoU against the scene's ground truth: " in status
    assert offered[0] == questions[1] and "<ref:0>" in questions[1]  # the scene goes on
    assert questions[0] not in offered
    status, offered = demo.ask("Segment the biggest shape.", key)[3::2]
    assert "ground truth" not in status  # off the scene's script: no comparison
    assert offered and not any("<ref:" in q for q in offered)
    assert demo.undo(key)[4][0] == questions[1]


@pytest.mark.parametrize("text, cursor, expected", [
    ("Segment the shape left of", None, "Segment the shape left of <ref:0>"),
    ("Segment the shape left of.", 25, "Segment the shape left of <ref:0>."),
    ("Segment  left", 8, "Segment <ref:0> left"),
    ("Segment the shape", 3, "Seg <ref:0> ment the shape"),
    ("", None, "<ref:0>"),
    ("Left of", 99, "Left of <ref:0>"),  # a stale cursor: the end
])
def test_insert_tag_spaces_the_tag_off_at_the_cursor(text, cursor, expected):
    from segllm.demo.app import insert_tag

    assert insert_tag(text, "<ref:0>", cursor=cursor) == expected


def test_clicking_a_round_refers_to_it(demo, image_file):
    key = demo.upload(str(image_file), None)[0]
    assert demo.refer(0, "Segment it.", None, key)[1] == "There is no round 0."
    demo.ask("Segment the red square.", key)
    question, status = demo.refer(0, "Segment the shape left of.", 25, key)
    assert question == "Segment the shape left of <ref:0>." and "Inserted `<ref:0>`" in status
    assert demo.ask(question, key)[3].startswith("Round 1: 1 mask(s).")
    demo._chats[key].session.history[1].masks[0][:] = False  # a round with nothing to bring back
    assert demo.refer(1, "q", None, key) == ("q", "Round 1 has no mask to refer to.")
    assert demo.refer(0, "q", None, None)[1] == "Upload an image first."


def test_two_clicks_draw_a_box_that_the_question_takes_as_a_region(demo, image_file):
    import numpy as np

    key = demo.upload(str(image_file), None)[0]
    question, status = demo.insert_region("Segment it.", None, key)
    assert question == "Segment it." and status.startswith("Draw a box first")
    refused = demo.ask("Segment the shape inside <region>.", key)[3]
    assert "&lt;region&gt; stands for region 0, but no region was given" in refused
    scale = demo._chats[key].scale
    preview, status = demo.click_image(40 * scale + 3, 30 * scale, key)  # image pixel (40, 30)
    assert status == "Corner at (40, 30): click the opposite corner."
    preview, status = demo.click_image(10 * scale, 5 * scale + 9, key)
    assert "Box [x, y, w, h] = [10, 5, 31, 26] drawn" in status
    pixels = np.asarray(preview)
    assert tuple(pixels[5 * scale, 20 * scale]) == (255, 40, 40)  # the box's top edge
    question, status = demo.insert_region("Segment the shape inside.", 24, key)
    assert question == "Segment the shape inside <region>."
    _, gallery, _, status, _, _ = demo.ask(question, key)
    assert status == "Round 0: 1 mask(s)."
    assert demo._chats[key].session._rounds[0].ref_crops.shape[0] == 1  # the box went in
    overlay = np.asarray(Image.open(gallery[0][0]))  # enlarged 8x, the box drawn on it
    assert tuple(overlay[5 * 8, 20 * 8]) == (255, 40, 40)
    preview, status = demo.clear_box(key)
    assert status == "Box cleared." and demo._chats[key].box is None
    assert not (np.asarray(preview) == (255, 40, 40)).all(axis=-1).any()


def test_upload_limit_is_whole_bytes_that_gradio_accepts():
    from gradio.utils import _parse_file_size  # what launch(max_file_size=...) calls

    from segllm.demo.app import upload_limit_bytes

    # the default 10.0 MiB once went to gradio as "10.0mb", which it refuses (whole numbers only)
    assert upload_limit_bytes(10.0) == 10 * 2**20 and upload_limit_bytes(0.5) == 2**19
    assert _parse_file_size(upload_limit_bytes(10.0)) == 10 * 2**20
