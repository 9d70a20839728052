"""The demo's event handlers, without a browser."""

from __future__ import annotations

import zipfile

import pytest
from PIL import Image

pytest.importorskip("gradio")


def test_upload_two_rounds_undo_and_download(demo, image_file):
    key, preview, chat, gallery, download, status = demo.upload(str(image_file), None)
    assert key and preview.size == (64, 48) and chat == [] and gallery == [] and download is None
    assert status.startswith("Image loaded (64x48)")
    chat, gallery, download, status, box = demo.ask("Segment the red square.", key)
    assert status == "Round 0: 1 mask(s)." and box == ""
    chat, gallery, download, status, _ = demo.ask("Segment the shape right of <ref:0>.", key)
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
    chat, gallery, download, status = demo.undo(key)
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
    key, preview, chat, gallery, download, status = demo.upload(str(path), None)
    assert key is None and preview is None
    assert status.startswith("**Refused:**") and message in status


def test_too_many_pixels_and_questions_before_an_image(demo, tmp_path):
    path = tmp_path / "wide.png"
    Image.new("L", (2100, 2000)).save(path)  # 4.2 M pixels, a tiny file
    status = demo.upload(str(path), None)[-1]
    assert "2100x2000 = 4 M pixels; the limit is 4 M pixels" in status
    assert demo.ask("Segment it.", None)[3] == "Upload an image first."
    assert demo.undo(None)[3] == "Upload an image first."


def test_a_refused_question_keeps_the_chat(demo, image_file):
    key = demo.upload(str(image_file), None)[0]
    demo.ask("Segment the red square.", key)
    chat, gallery, _, status, box = demo.ask("Segment <ref:3>.", key)
    assert "refers to round 3, which does not exist" in status and box == "Segment <ref:3>."
    assert len(chat) == 2 and len(gallery) == 1
    chat, _, _, status, _ = demo.ask("   ", key)
    assert "the question is empty" in status
    assert demo.ask("And <ref:0>?", key)[3] == "Round 1: 1 mask(s)."


def test_old_sessions_are_dropped_past_the_limit(demo, image_file):
    demo.max_sessions = 2
    keys = [demo.upload(str(image_file), None)[0] for _ in range(3)]
    assert demo.ask("Segment it.", keys[0])[3] == "Upload an image first."
    assert demo.ask("Segment it.", keys[2])[3] == "Round 0: 1 mask(s)."
    assert not (demo.output_root / keys[0]).exists()
    demo.max_sessions = 32


def test_serve_arguments_and_blocks_build(demo):
    from segllm import cli

    args = cli.build_parser().parse_args(["serve", "--model", "m", "--max-file-mb", "2",
                                          "--load-in-4bit", "--port", "7999"])
    assert (args.max_file_mb, args.load_in_4bit, args.port) == (2.0, True, 7999)
    blocks = demo.build()
    ids = {c.elem_id for c in blocks.blocks.values() if getattr(c, "elem_id", None)}
    assert {"upload", "question", "send", "undo", "overlays", "status", "chat",
            "download", "preview"} <= ids
