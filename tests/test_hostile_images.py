"""Images and labels are read by value or refused, and checked before anything is allocated (issue 12,
items 4, 5 and 9): size from the header, regular files only, single frames, every pixel format decided."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from caffe2torch.errors import CaffeError
from caffe2torch.images import DEFAULT_MAX_PIXELS, image_size, list_images, read_image, read_label_image

from .runtime_helpers import png16, png_with_header


def test_a_png_bomb_is_refused_from_its_header_before_decoding(tmp_path):
    # 100 bytes claiming 30000 x 30000 (900 Mpixels); a real bomb's IDAT would inflate to that size
    bomb = png_with_header(tmp_path / "bomb.png", 30000, 30000)
    assert bomb.stat().st_size < 200
    with pytest.raises(CaffeError, match=r"over the limit of 16777216 pixels \(--max-pixels raises it\); nothing "
                       r"was decoded \(Pillow: Image size \(900000000 pixels\)"):
        read_image(bomb)  # Pillow's own check (over twice its limit) speaks first, in our words
    bomb = png_with_header(tmp_path / "bomb.png", 10000, 10000)  # under Pillow's, over ours
    with pytest.raises(CaffeError, match=r"10000x10000 = 100000000 pixels, over the limit of 16777216"):
        read_image(bomb)
    with pytest.raises(CaffeError, match="nothing was decoded"):
        read_label_image(bomb)
    # the limit is a parameter: a 200x100 header over a limit of 10000
    small = png_with_header(tmp_path / "small.png", 200, 100)
    with pytest.raises(CaffeError, match="over the limit of 10000"):
        image_size(small, max_pixels=10000)
    assert image_size(small) == (100, 200) and DEFAULT_MAX_PIXELS == 4096 * 4096


def test_pillows_own_bomb_error_is_reported_as_the_pixel_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow raises over twice its limit
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((60, 60, 3), np.uint8)).save(image)
    with pytest.raises(CaffeError, match=r"over the limit of 1000000 pixels \(--max-pixels"):
        read_image(image, max_pixels=1_000_000)


def test_16_bit_images_are_read_by_value(tmp_path):
    """16-bit grey used to be clipped to white: now, like 16-bit colour, each sample keeps its high byte."""
    grey = np.array([[0, 255, 256, 32768], [40000, 65280, 65535, 513]], np.uint16)
    path = png16(tmp_path / "grey16.png", grey)
    assert Image.open(path).mode == "I;16"
    rgb = read_image(path)
    np.testing.assert_array_equal(rgb[..., 0], grey >> 8)
    assert (rgb[..., 0] == rgb[..., 2]).all()
    colour = np.stack([grey, grey[::-1], 65535 - grey], axis=2)
    np.testing.assert_array_equal(read_image(png16(tmp_path / "rgb16.png", colour)), colour >> 8)
    # 16-bit TIFF and a PGM with maxval 1023 (Pillow scales PGM samples to 16 bits)
    Image.fromarray(grey).save(tmp_path / "grey16.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "grey16.tif")[..., 1], grey >> 8)
    (tmp_path / "ten.pgm").write_bytes(b"P5\n3 1\n1023\n" + np.array([0, 512, 1023], ">u2").tobytes())
    np.testing.assert_array_equal(read_image(tmp_path / "ten.pgm")[0, :, 0], [0, 128, 255])


def test_float_and_32_bit_integer_images_are_refused(tmp_path):
    Image.fromarray(np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)).save(tmp_path / "f.tif")
    with pytest.raises(CaffeError, match="mode F .*floating point.*not defined"):
        read_image(tmp_path / "f.tif")
    Image.fromarray(np.arange(12, dtype=np.int32).reshape(3, 4) * 100000).save(tmp_path / "i.tif")
    with pytest.raises(CaffeError, match="mode I .*32-bit integer"):
        read_image(tmp_path / "i.tif")


def test_palette_grey_alpha_cmyk_and_1_bit_are_converted_exactly(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 128, 255]], [[10, 20, 30], [200, 200, 200]]], np.uint8)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), rgb)
    grey = np.array([[0, 77], [200, 255]], np.uint8)
    Image.fromarray(grey).save(tmp_path / "l.png")  # no EXIF, grey
    np.testing.assert_array_equal(read_image(tmp_path / "l.png"), np.repeat(grey[..., None], 3, 2))
    Image.fromarray(np.dstack([grey, 255 - grey])).save(tmp_path / "la.png")  # alpha dropped, as OpenCV
    np.testing.assert_array_equal(read_image(tmp_path / "la.png")[..., 0], grey)
    Image.fromarray(np.dstack([rgb, np.zeros((2, 2), np.uint8)])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)
    Image.fromarray(np.array([[True, False], [False, True]])).save(tmp_path / "bits.png")
    assert Image.open(tmp_path / "bits.png").mode == "1"
    np.testing.assert_array_equal(read_image(tmp_path / "bits.png")[..., 1], [[255, 0], [0, 255]])
    Image.new("CMYK", (2, 1), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")  # pure red in CMYK
    np.testing.assert_array_equal(read_image(tmp_path / "cmyk.tif")[0, 0], [255, 0, 0])


def test_animated_and_multi_page_images_are_refused(tmp_path):
    frames = [Image.new("RGB", (4, 4), colour) for colour in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    for name in ("anim.gif", "anim.png", "pages.tif"):
        with pytest.raises(CaffeError, match="several frames"):
            read_image(tmp_path / name)
    frames[0].save(tmp_path / "still.gif")
    assert read_image(tmp_path / "still.gif").shape == (4, 4, 3)


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "is a folder, not an image file"),
    (lambda p: os.mkfifo(p), "is a FIFO"),
    (lambda p: None, "no such image"),
    (lambda p: p.write_bytes(b""), "not an image file Pillow can read"),
    (lambda p: p.write_bytes(b"just some text, named .jpg"), "not an image file Pillow can read"),
    (lambda p: p.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg"), "cannot"),
    (lambda p: png_with_header(p, 0, 10), "not an image file Pillow can read|no pixels"),
    (lambda p: png_with_header(p, 40, 30, idat=b"not zlib"), "cannot decode the image"),
])
def test_files_that_are_not_images_are_refused_naming_them(tmp_path, make, message):
    path = tmp_path / "x.jpg"
    make(path)
    with pytest.raises(CaffeError, match=message) as caught:
        read_image(path)  # a FIFO would block forever if it were opened for reading
    assert str(caught.value).startswith(str(path))


def test_folders_list_odd_entries_so_that_they_are_reported(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "notes.txt").write_text("not an image suffix")
    assert [p.name for p in list_images([tmp_path])] == ["a.jpg", "pipe.jpg", "sub.png"]


def test_labels_are_read_by_value_or_refused(tmp_path):
    values = np.array([[0, 15, 255], [3, 20, 1]], np.uint16)
    np.testing.assert_array_equal(read_label_image(png16(tmp_path / "l16.png", values)), values)
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "bits.png")
    np.testing.assert_array_equal(read_label_image(tmp_path / "bits.png"), [[1, 0]])
    Image.fromarray(values.astype(np.uint8)).save(tmp_path / "l.jpg")
    with pytest.raises(CaffeError, match="JPEG label image"):
        read_label_image(tmp_path / "l.jpg")
    (tmp_path / "l.pgm").write_bytes(b"P5\n3 1\n20\n" + bytes([0, 15, 20]))
    with pytest.raises(CaffeError, match="PPM label image"):
        read_label_image(tmp_path / "l.pgm")
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(CaffeError, match="mode RGB"):
        read_label_image(tmp_path / "rgb.png")
    Image.fromarray(np.zeros((2, 3), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(CaffeError, match="mode F"):
        read_label_image(tmp_path / "f.tif")
    # the size is compared in the header: a label bomb next to a small image is never decoded
    bomb = png_with_header(tmp_path / "bomb.png", 4000, 4000)
    with pytest.raises(CaffeError, match="4000x4000 but the image is 3x2"):
        read_label_image(bomb, size=(2, 3))
