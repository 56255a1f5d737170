"""load_image's conversion rule on synthetic images of every mode, and its errors on bad files."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from histokit.data import CorruptImageError, ImageTooLargeError, load_image
from histokit.data.images import array_to_image, to_rgb
from histokit.paths import BUNDLED_TILES_DIR


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_rgb_unchanged(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (8, 9, 3), dtype=np.uint8)
    out = load_image(_save(Image.fromarray(arr), tmp_path / "a.png"))
    assert out.mode == "RGB" and out.size == (9, 8) and np.array_equal(np.asarray(out), arr)


@pytest.mark.bad_input
def test_rgba_composited_on_white(tmp_path):
    arr = np.zeros((2, 2, 4), dtype=np.uint8)
    arr[0, 0] = (255, 0, 0, 255)      # opaque red stays red
    arr[0, 1] = (0, 0, 0, 0)          # fully transparent -> white, not black
    arr[1, 0] = (0, 0, 255, 128)      # half blue over white
    out = np.asarray(load_image(_save(Image.fromarray(arr), tmp_path / "a.png")))
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 1]) == (255, 255, 255)
    assert abs(int(out[1, 0, 0]) - 127) <= 1 and out[1, 0, 2] == 255


@pytest.mark.bad_input
def test_la_composited_on_white(tmp_path):
    img = Image.new("LA", (2, 1), (0, 0))
    img.putpixel((1, 0), (50, 255))
    out = np.asarray(load_image(_save(img, tmp_path / "la.png")))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == (50, 50, 50)


@pytest.mark.bad_input
def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (2, 1), 0)
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 0
    path = _save(img, tmp_path / "p.png", transparency=0)
    out = np.asarray(load_image(path))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == (200, 100, 50)


@pytest.mark.bad_input
def test_palette_without_transparency(tmp_path):
    img = Image.new("P", (1, 1), 0)
    img.putpalette([10, 20, 30] + [0] * 765)
    assert tuple(np.asarray(load_image(_save(img, tmp_path / "p.png")))[0, 0]) == (10, 20, 30)


@pytest.mark.bad_input
def test_grey_and_bilevel(tmp_path):
    out = np.asarray(load_image(_save(Image.new("L", (2, 2), 77), tmp_path / "l.png")))
    assert out.shape == (2, 2, 3) and (out == 77).all()
    out = np.asarray(load_image(_save(Image.new("1", (2, 2), 1), tmp_path / "b.png")))
    assert (out == 255).all()


@pytest.mark.bad_input
def test_16bit_grey_scaled_to_8bit(tmp_path):
    values = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)  # 32896 = 128 * 257
    path = _save(Image.fromarray(values), tmp_path / "g16.png")
    assert Image.open(path).mode in ("I;16", "I")
    out = np.asarray(load_image(path))[..., 0]
    assert out.tolist() == [[0, 1, 255, 128]]


@pytest.mark.bad_input
def test_32bit_int_mode_clipped():
    img = Image.fromarray(np.array([[-5, 70000, 514]], dtype=np.int32))
    assert img.mode == "I"
    assert np.asarray(to_rgb(img))[..., 0].tolist() == [[0, 255, 2]]


@pytest.mark.bad_input
def test_cmyk_converted(tmp_path):
    path = _save(Image.new("CMYK", (2, 2), (0, 0, 0, 0)), tmp_path / "c.jpg", quality=100)
    out = np.asarray(load_image(path))
    assert out.shape == (2, 2, 3) and (out >= 250).all()  # no ink = white


@pytest.mark.bad_input
def test_unsupported_mode_names_file(tmp_path):
    path = _save(Image.new("F", (2, 2), 0.5), tmp_path / "float.tif")
    with pytest.raises(ValueError, match=r"float\.tif.*unsupported image mode 'F'"):
        load_image(path)


@pytest.mark.bad_input
def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(CorruptImageError, match=r"empty\.png: zero-byte"):
        load_image(tmp_path / "empty.png")


@pytest.mark.bad_input
def test_truncated_file_names_file(tmp_path):
    data = (BUNDLED_TILES_DIR / "01_TUMOR" / "image_0_label_0.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImageError, match=r"trunc\.png"):
        load_image(tmp_path / "trunc.png")


@pytest.mark.bad_input
def test_garbage_file_names_file(tmp_path):
    (tmp_path / "junk.tif").write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(CorruptImageError, match=r"junk\.tif"):
        load_image(tmp_path / "junk.tif")


@pytest.mark.bad_input
def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image("/nonexistent/nope.png")


@pytest.mark.bad_input
def test_decompression_bomb_limit(tmp_path):
    path = _save(Image.new("RGB", (30, 30)), tmp_path / "big.png")  # 900 px
    for limit in (500, 100):  # above the limit (PIL warns) and above twice the limit (PIL raises): both errors
        with pytest.raises(ImageTooLargeError, match=r"big\.png.*max_pixels"):
            load_image(path, max_pixels=limit)
    assert load_image(path, max_pixels=1000).size == (30, 30)
    assert Image.MAX_IMAGE_PIXELS > 1000  # the global limit is restored


@pytest.mark.bad_input
def test_array_to_image_rounds_float_arrays():
    arr = np.full((2, 2, 3), 127.6, dtype=np.float64)  # PanNuke stores images as float64
    assert np.asarray(array_to_image(arr)).tolist() == [[[128] * 3] * 2] * 2
    with pytest.raises(ValueError, match="shape"):
        array_to_image(np.zeros((2, 2, 4)))
