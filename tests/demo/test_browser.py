"""End to end in headless Chromium, on a tiny random model saved to disk and served the way
``segllm serve`` without ``--model`` serves the shipped one (``$SEGLLM_MODEL`` points at it):
upload and two typed rounds; an example scene and three rounds through the page's controls
(a suggestion, a clicked round for ``<ref:0>``, a drawn box for ``<region>``). Screenshots go
to ``build/test-artifacts/``."""

from __future__ import annotations

import re
import shutil
import socket
from pathlib import Path

import pytest

pytest.importorskip("gradio")
playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"
TIMEOUT_MS = 20_000

pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None,
                                reason="needs Debian's chromium (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_demo(tmp_path_factory):
    """The demo on a saved tiny model, found with no --model given; answers always hold [SEG]."""
    import torch

    from segllm import cli
    from segllm.commands.chat import load_pipeline
    from segllm.config import SegLLMConfig
    from segllm.demo.app import SegLLMDemo
    from segllm.modeling.model import SegLLMModel
    from tests.pipeline.helpers import forcing

    torch.manual_seed(0)
    folder = SegLLMModel.from_config(SegLLMConfig.from_name("tiny")).save_pretrained(
        tmp_path_factory.mktemp("model") / "tiny")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGLLM_MODEL", str(folder))
        pipeline = load_pipeline(cli.build_parser().parse_args(["serve"]))
    return SegLLMDemo(pipeline, generation=forcing(pipeline, "Sure, [SEG]."),
                      max_file_bytes=200_000, max_pixels=4_000_000,
                      output_root=tmp_path_factory.mktemp("demo-out"))


@pytest.fixture(scope="module")
def server(served_demo):
    from segllm.demo.app import CSS

    blocks = served_demo.build()
    port = free_port()
    blocks.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                          quiet=True, max_file_size="1mb", css=CSS)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        blocks.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    try:
        yield context.new_page()
    finally:
        context.close()


def ask(page, question: str, status: str) -> None:
    page.locator("#question textarea").fill(question)
    page.locator("#send").click()
    playwright_api.expect(page.locator("#status")).to_contain_text(status, timeout=TIMEOUT_MS)


def upload(page, path) -> None:
    """Click the upload button and pick ``path`` in the file chooser it opens."""
    with page.expect_file_chooser() as chooser:
        page.locator("#upload").click()
    chooser.value.set_files(str(path))


def test_upload_two_rounds_and_the_overlays_appear(server, page, image_file, tmp_path):
    expect = playwright_api.expect
    page.goto(server)
    upload(page, image_file)
    expect(page.locator("#status")).to_contain_text("Image loaded (64x48)", timeout=TIMEOUT_MS)
    ask(page, "Segment the red square.", "Round 0: 1 mask(s).")
    ask(page, "Segment the shape right of <ref:0>.", "Round 1: 1 mask(s).")
    expect(page.locator("#chat")).to_contain_text("[1] Segment the shape right of <ref:0>.")
    overlays = page.locator("#overlays img")
    expect(overlays).to_have_count(2, timeout=TIMEOUT_MS)
    expect(page.locator("#overlays")).to_contain_text("round 1: Sure, [SEG].")
    for i in range(2):  # the overlay images really loaded
        # a 64x48 image's overlay is enlarged 8x (a 384 px shorter side) so its labels stay small
        assert overlays.nth(i).evaluate("img => img.complete && img.naturalWidth") == 64 * 8
    expect(page.locator("#download")).to_contain_text(".zip", timeout=TIMEOUT_MS)
    screenshot(page, "demo_two_rounds.png")


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / name
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def click_image_at(page, x: float, y: float) -> None:
    """Click the shown image at a fraction (x, y) of its width and height."""
    image = page.locator("#preview img")
    box = image.bounding_box()
    image.click(position={"x": box["width"] * x, "y": box["height"] * y})


def send(page, status: str) -> None:
    page.locator("#send").click()
    playwright_api.expect(page.locator("#status")).to_contain_text(status, timeout=TIMEOUT_MS)


def test_three_rounds_with_a_scene_a_clicked_round_and_a_drawn_box(server, page, served_demo):
    expect = playwright_api.expect
    scene = served_demo.scenes[0]
    questions = [rnd["question"] for rnd in scene["rounds"]]
    question = page.locator("#question textarea")
    page.goto(server)
    page.locator("#scenes button").nth(0).click()  # the first example scene
    expect(page.locator("#status")).to_contain_text("Scene 0 loaded (64x64)", timeout=TIMEOUT_MS)
    expect(page.locator("#preview img")).to_have_js_property("naturalWidth", 512)
    # round 0: a suggested question, clicked
    suggestion = page.locator("#suggestions button").first
    expect(suggestion).to_have_text(questions[0], timeout=TIMEOUT_MS)
    suggestion.click()
    expect(question).to_have_value(questions[0], timeout=TIMEOUT_MS)
    send(page, "Round 0: 1 mask(s). IoU against the scene's ground truth:")
    expect(page.locator("#suggestions button").first).to_have_text(questions[1])
    # round 1: round 0's overlay clicked puts <ref:0> at the cursor
    question.fill("Segment the shape closest to the left of")
    page.locator("#overlays button.thumbnail-item").first.click()
    expect(question).to_have_value("Segment the shape closest to the left of <ref:0>",
                                   timeout=TIMEOUT_MS)
    send(page, "Round 1: 1 mask(s).")
    # round 2: a box drawn with two clicks, inserted as <region> where the cursor is
    click_image_at(page, 0.7, 0.38)  # around the middle square
    expect(page.locator("#status")).to_contain_text("click the opposite corner",
                                                    timeout=TIMEOUT_MS)
    click_image_at(page, 0.99, 0.65)
    expect(page.locator("#status")).to_contain_text("drawn", timeout=TIMEOUT_MS)
    question.fill("Segment the shape inside.")
    question.evaluate("box => box.setSelectionRange(24, 24)")  # before the full stop
    page.locator("#insert-region").click()
    expect(question).to_have_value("Segment the shape inside <region>.", timeout=TIMEOUT_MS)
    send(page, "Round 2: 1 mask(s).")
    # every round's question and answer, and its overlay
    chat = page.locator("#chat")
    for text in (f"[0] {questions[0]}", "[1] Segment the shape closest to the left of <ref:0>",
                 "[2] Segment the shape inside <region>.", "Sure, [SEG]."):
        expect(chat).to_contain_text(text)
    overlays = page.locator("#overlays img")
    expect(overlays).to_have_count(3, timeout=TIMEOUT_MS)
    for i in range(3):
        expect(page.locator("#overlays")).to_contain_text(f"round {i}: Sure, [SEG].")
        assert overlays.nth(i).evaluate("img => img.complete && img.naturalWidth") == 64 * 6
    history = served_demo._chats[next(reversed(served_demo._chats))].session.history
    assert [r.question for r in history][1:] == [
        "Segment the shape closest to the left of <ref:0>", "Segment the shape inside <region>."]
    screenshot(page, "demo_three_rounds.png")


def test_a_non_image_upload_shows_a_message(server, page, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image")
    page.goto(server)
    upload(page, fake)
    playwright_api.expect(page.locator("#status")).to_contain_text(
        "notes.png is not an image PIL can read", timeout=TIMEOUT_MS)


def test_a_video_and_a_query_show_the_overlay_gif(server, page, tmp_path):
    from .test_video_input import write_video

    expect = playwright_api.expect
    clip = write_video(tmp_path / "clip.mp4", count=6)
    page.goto(server)
    page.locator("#video").get_by_text("Video: upload a video").click()  # open the section
    page.locator("#video-file input[type=file]").set_input_files(str(clip))
    expect(page.locator("#video-file")).to_contain_text("clip.mp4", timeout=TIMEOUT_MS)
    page.locator("#video-query textarea").fill("the bright square")
    page.locator("#video-send").click()
    expect(page.locator("#video-status")).to_contain_text("Mask on", timeout=TIMEOUT_MS)
    overlay = page.locator("#video-overlay img")
    expect(overlay).to_have_count(1, timeout=TIMEOUT_MS)
    assert overlay.evaluate("img => img.complete && img.naturalWidth") > 0
    assert overlay.get_attribute("src").endswith(".gif")
    link = page.locator("#video-masks a").first  # the per-frame masks, to download
    expect(link).to_have_attribute("href", re.compile(r"masks\.jsonl$"), timeout=TIMEOUT_MS)
    screenshot(page, "demo_video.png")
