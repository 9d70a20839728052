"""Bad questions, references and images: handled correctly, or refused with a message that says
why, and the session stays usable afterwards."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from segllm.images import ImageError, ImageLimits, InputError
from segllm.images import load_image as load_any_image
from tests.pipeline.helpers import forcing


def load_image(source, limits: ImageLimits | None = None):
    """A user's image, as chat and the demo load it (EXIF orientation applied)."""
    return load_any_image(source, orientation="exif", limits=limits or ImageLimits())


@pytest.fixture()
def session(pipeline, image):
    s = pipeline.start(image)
    s.ask("Segment the red square.", generation=forcing(pipeline, "Sure, [SEG]."))
    return s


def assert_unchanged_then_usable(pipeline, session, ids, rounds):
    assert session.token_ids == ids and session.num_rounds == rounds
    assert session.cache_length == len(ids) - 1
    reply = session.ask("Segment <ref:0> again.", generation=forcing(pipeline, "[SEG]."))
    assert reply.round == rounds and len(reply.masks) == 1


@pytest.mark.parametrize("question, message", [
    ("", "the question is empty"),
    ("   \n\t", "the question is empty"),
    ("Segment <ref:1>.", r"<ref:1> refers to round 1, which does not exist \(this session has "
                         r"rounds 0..0\)"),
    ("Segment <ref:7> and <ref:0>.", "<ref:7> refers to round 7"),
    ("Segment [SEG] please.", r"may not contain '\[SEG\]'"),
    ("Look at <image> here.", "may not contain '<image>'"),
    ("x" * 5000, "5000 characters long; the limit is 4000"),
    (None, "the question must be text"),
])
def test_bad_questions_are_refused_and_the_session_stays_usable(pipeline, session, question,
                                                                message):
    ids, rounds = session.token_ids, session.num_rounds
    with pytest.raises(InputError, match=message):
        session.ask(question)
    assert_unchanged_then_usable(pipeline, session, ids, rounds)


def test_a_reference_in_the_first_round_is_refused(pipeline, image):
    session = pipeline.start(image)
    with pytest.raises(InputError, match=r"<ref:0> refers to round 0, .*no rounds yet"):
        session.ask("Segment <ref:0>.")
    assert session.ask("Segment it.", generation=forcing(pipeline, "[SEG].")).round == 0


def test_a_reference_to_a_round_without_masks_is_dropped_with_a_warning(pipeline, session):
    no_mask = session.ask("What is this?", generation=forcing(pipeline, "A picture."))
    assert no_mask.masks == []
    reply = session.ask("Segment <ref:1> and <ref:0>.", generation=forcing(pipeline, "[SEG]."))
    assert reply.warnings == ["<ref:1>: round 1 has no mask to refer to; the reference was "
                              "dropped from the question"]
    assert len(reply.masks) == 1
    with pytest.raises(InputError, match="nothing left"):
        session.ask("<ref:1>")


def test_a_full_conversation_is_refused_not_truncated(pipeline, image):
    from dataclasses import replace

    short = type(pipeline)(pipeline.model, generation=pipeline.generation)
    short.max_length = 120
    session = short.start(image)
    session.ask("Segment the red square.", generation=forcing(short, "Sure, [SEG]."))
    ids = session.token_ids
    with pytest.raises(InputError, match="the conversation is full"):
        session.ask("Segment the shape right of <ref:0> and everything around it, please.",
                    generation=replace(forcing(short, "[SEG]."), max_new_tokens=4))
    assert session.token_ids == ids
    session.undo()
    assert session.ask("Segment it.", generation=forcing(short, "[SEG].")).round == 0


# -- images ----------------------------------------------------------------------------------------


def png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def test_cmyk_is_converted(pipeline):
    cmyk = Image.new("CMYK", (20, 10), (0, 255, 255, 0))  # pure red in CMYK
    session = pipeline.start(cmyk)
    assert session.image.mode == "RGB" and session.image.getpixel((3, 3)) == (255, 0, 0)
    reply = session.ask("Segment the red part.", generation=forcing(pipeline, "[SEG]."))
    assert reply.masks[0].shape == (10, 20)


def test_la_alpha_is_composited_on_white():
    la = Image.new("LA", (4, 2), (100, 255))
    la.putpixel((0, 0), (100, 0))  # fully transparent
    la.putpixel((1, 0), (0, 128))  # half transparent black
    rgb = load_image(png_bytes(la))
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((1, 0)) == (127, 127, 127)
    assert rgb.getpixel((2, 1)) == (100, 100, 100)


def test_16_bit_greyscale_is_scaled_not_clipped(pipeline):
    array = np.array([[0, 257 * 128, 65535, 1000]], dtype=np.uint16)
    i16 = Image.fromarray(array)
    assert i16.mode == "I;16"
    assert np.asarray(i16.convert("RGB"))[0, 1, 0] == 255  # PIL's own conversion clips
    rgb = np.asarray(load_image(png_bytes(i16)))
    assert rgb[0, :, 0].tolist() == [0, 128, 255, 4] and (rgb[..., 0] == rgb[..., 2]).all()
    assert pipeline.start(i16).size == (1, 4)


def test_palette_images_expand_with_and_without_transparency():
    palette = Image.new("P", (3, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putdata([0, 1, 0])
    assert np.asarray(load_image(png_bytes(palette))).tolist() == [[[255, 0, 0], [0, 0, 255],
                                                                    [255, 0, 0]]]
    see_through = png_bytes(palette, transparency=1)
    assert np.asarray(load_image(see_through))[0, 1].tolist() == [255, 255, 255]


def test_exif_rotation_is_applied_and_masks_follow_it(pipeline):
    stored = Image.new("RGB", (40, 24), (0, 0, 0))
    stored.putpixel((0, 0), (255, 255, 255))  # top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif.tobytes(), quality=100)
    session = pipeline.start(buffer.getvalue())
    assert session.size == (40, 24)  # displayed upright: 24 wide, 40 high
    assert session.image.getpixel((23, 0))[0] > 200  # stored top-left is now top-right
    reply = session.ask("Segment the dot.", generation=forcing(pipeline, "[SEG]."))
    assert reply.masks[0].shape == (40, 24)


def test_a_one_pixel_image_works(pipeline):
    session = pipeline.start(np.full((1, 1, 3), 200, dtype=np.uint8))
    first = session.ask("Segment it.", generation=forcing(pipeline, "[SEG]."))
    assert first.masks[0].shape == (1, 1) and first.masks[0].dtype == np.bool_
    if first.masks[0].any():  # its mask can be referred to
        second = session.ask("And <ref:0>?", generation=forcing(pipeline, "[SEG]."))
        assert second.warnings == [] and second.masks[0].shape == (1, 1)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` but carries almost no data: only the header is
    read before the size check, so the test costs nothing."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))
            + chunk(b"IEND", b""))


def test_a_20000_pixel_square_is_refused_before_decoding(pipeline, tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(20_000, 20_000))
    started = time.perf_counter()
    # PIL's decompression-bomb guard fires first, on the header (over 2x its 89 M limit)
    with pytest.raises(ImageError, match=r"huge.png: refused as a possible decompression bomb "
                                         r"\(Image size \(400000000 pixels\)"):
        pipeline.start(path)
    assert time.perf_counter() - started < 1.0
    # under PIL's limits, our own pixel limit (40 M by default) refuses it
    path.write_bytes(png_header_only(7_000, 7_000))
    with pytest.raises(ImageError, match=r"the image is 7000x7000 = 49 M pixels; the limit is "
                                         r"40 M pixels"):
        pipeline.start(path)
    with pytest.raises(ImageError, match="the limit is 1 M pixels"):
        load_image(np.zeros((1000, 1001, 3), dtype=np.uint8), ImageLimits(max_pixels=10**6))


def test_a_20000_pixel_wide_strip_is_handled_at_full_size(pipeline):
    strip = np.zeros((256, 20_000, 3), dtype=np.uint8)
    strip[:, 5000:6000] = 255
    session = pipeline.start(strip)
    assert tuple(session._model_pixels.shape) == (3, 52, 4096)  # the model sees it scaled down
    reply = session.ask("Segment the white band.", generation=forcing(pipeline, "[SEG]."))
    assert reply.masks[0].shape == (256, 20_000)


def test_an_extreme_aspect_ratio_is_refused_with_the_reason(pipeline):
    with pytest.raises(ImageError, match=r"20000x2 pixels: an aspect ratio of 10000:1 is too "
                                         r"extreme for the mask decoder"):
        pipeline.start(np.zeros((2, 20_000, 3), dtype=np.uint8))


@pytest.mark.parametrize("payload, message", [
    (b"%PDF-1.4 not an image", "is not an image PIL can read"),
    (b"", "is empty"),
    (png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))[:60], "could not be decoded"),
])
def test_files_that_are_not_usable_images_are_refused(pipeline, tmp_path, payload, message):
    path = tmp_path / "upload.png"
    path.write_bytes(payload)
    with pytest.raises(ImageError, match=message):
        pipeline.start(path)


def test_file_size_limit(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(Image.new("RGB", (64, 64))))
    with pytest.raises(ImageError, match=r"big.png: the file is 0.0 MiB; the limit is 0 MiB"):
        load_image(path, ImageLimits(max_file_bytes=10))
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_arrays_of_other_shapes_and_types_are_refused_or_converted():
    assert load_image(np.zeros((5, 6), dtype=np.uint8)).size == (6, 5)
    assert load_image(np.full((2, 2), 65535, dtype=np.uint16)).getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ImageError, match="expected an HxW, HxWx3 or HxWx4 array"):
        load_image(np.zeros((2, 2, 5), dtype=np.uint8))
    with pytest.raises(ImageError, match="float64"):
        load_image(np.zeros((2, 2, 3)))
    with pytest.raises(ImageError, match=r"the image is empty \(0x3 pixels\)"):
        load_image(Image.new("RGB", (0, 3)))
