"""End to end in headless Chromium: upload, two rounds, the overlays appear; a screenshot is saved
to ``build/test-artifacts/demo_two_rounds.png``."""

from __future__ import annotations

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
def server(demo):
    blocks = demo.build()
    port = free_port()
    blocks.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                          quiet=True, max_file_size="1mb")
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


def test_upload_two_rounds_and_the_overlays_appear(server, page, image_file, tmp_path):
    expect = playwright_api.expect
    page.goto(server)
    page.locator("#upload input[type=file]").set_input_files(str(image_file))
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
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "demo_two_rounds.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_a_non_image_upload_shows_a_message(server, page, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image")
    page.goto(server)
    page.locator("#upload input[type=file]").set_input_files(str(fake))
    playwright_api.expect(page.locator("#status")).to_contain_text(
        "notes.png is not an image PIL can read", timeout=TIMEOUT_MS)
