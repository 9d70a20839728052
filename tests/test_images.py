"""segllm.images: one loader, two orientation rules, on a JPEG whose EXIF says "rotate 90 CW"."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from segllm.images import load_image

H, W = 20, 40  # as stored: 40 wide, 20 high; shown upright (EXIF 6): 20 wide, 40 high


def exif6_jpeg() -> bytes:
    """A stored 40x20 JPEG with a white 4x4 square at its stored top-left, EXIF orientation 6."""
    stored = Image.new("RGB", (W, H), (0, 0, 0))
    stored.paste((255, 255, 255), (0, 0, 4, 4))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif.tobytes(), quality=100)
    return buffer.getvalue()


def test_stored_keeps_the_pixel_array_and_exif_shows_it_upright(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(exif6_jpeg())
    for source in (path, exif6_jpeg()):
        stored = load_image(source, orientation="stored")
        assert stored.size == (W, H) and stored.getpixel((1, 1))[0] > 200
        shown = load_image(source, orientation="exif")
        assert shown.size == (H, W) and shown.getpixel((H - 2, 1))[0] > 200  # now top-right
        assert shown.getpixel((1, 1))[0] < 50


def test_a_loaded_image_has_no_orientation_left_to_apply():
    """What evaluation loads (stored) and hands on is never rotated by a later "exif" load."""
    stored = load_image(exif6_jpeg(), orientation="stored")
    assert load_image(stored, orientation="exif").size == (W, H)
    shown = load_image(exif6_jpeg(), orientation="exif")
    assert load_image(shown, orientation="exif").size == (H, W)


def test_the_rule_must_be_named():
    with pytest.raises(ValueError, match=r"orientation must be one of \['stored', 'exif'\]"):
        load_image(exif6_jpeg(), orientation="upright")
    with pytest.raises(TypeError):
        load_image(exif6_jpeg())  # no default: every caller says which rule it needs


def test_training_reads_the_stored_pixels(tmp_path):
    from segllm.train.data import ConversationSource

    (tmp_path / "a.jpg").write_bytes(exif6_jpeg())
    source = ConversationSource(name="t", records=[{"id": "a", "image": "a.jpg"}],
                                image_root=tmp_path, weight=1.0)
    record, pixels = source.load(0)
    assert pixels.shape == (H, W, 3) and pixels[1, 1, 0] > 200
