"""Safe image input: formats, caps checked before decoding, normalization, hostile input."""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from daguerre.config import ImageLimits
from daguerre.errors import ImageInputError
from daguerre.imaging import encode, load_image, read_embedded

LIMITS = ImageLimits()


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _load(data, **kw):
    return load_image(data, parameter="seedImage", limits=kw.pop("limits", LIMITS), **kw)


def _png_with_size(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h, with (almost) no pixel data: a decompression bomb's shape."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_accepts_allowed_formats_from_base64_data_uri_and_path(fmt, tmp_path):
    im = Image.new("RGB", (40, 30), (200, 10, 10))
    data = _bytes(im, fmt)
    b64 = base64.b64encode(data).decode()
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(data)
    for src in (data, b64, f"data:image/{fmt.lower()};base64,{b64}", str(path), path):
        out = _load(src)
        assert out.size == (40, 30) and out.mode == "RGB"


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_rejects_other_formats(fmt):
    with pytest.raises(ImageInputError) as e:
        _load(_bytes(Image.new("RGB", (8, 8)), fmt))
    assert e.value.parameter == "seedImage" and "PNG, JPEG or WEBP" in e.value.message


def test_pixel_cap_is_checked_from_the_header_before_decoding():
    t = time.perf_counter()
    with pytest.raises(ImageInputError) as e:
        _load(_png_with_size(50_000, 50_000))
    assert time.perf_counter() - t < 1.0
    assert "too large" in e.value.message and "4096 px" in e.value.message
    with pytest.raises(ImageInputError) as e:
        _load(_png_with_size(4097, 16))  # one side over 4096
    assert "4097x16" in e.value.message
    small = ImageLimits(max_pixels=100, max_side=4096)
    with pytest.raises(ImageInputError):
        _load(_bytes(Image.new("RGB", (11, 10)), "PNG"), limits=small)
    assert _load(_bytes(Image.new("RGB", (10, 10)), "PNG"), limits=small).size == (10, 10)


def test_base64_size_cap_before_decoding():
    limits = ImageLimits(max_bytes=1000)
    with pytest.raises(ImageInputError) as e:
        _load("A" * 5000, limits=limits)
    assert "cap" in e.value.message


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x89PNG\r\n\x1a\n",
        b"not an image at all",
        b"\xff\xd8\xff" + b"\0" * 50,
        "!!!not base64!!!",
        "data:text/html;base64,PGgxPg==",
        "data:image/png,raw",
        "http://127.0.0.1/x.png",
        "/no/such/file.png",
    ],
)
def test_garbage_gives_a_clear_error(garbage):
    with pytest.raises(ImageInputError) as e:
        _load(garbage)
    assert e.value.parameter == "seedImage"


def test_truncated_image_is_an_error_not_a_crash():
    data = _bytes(Image.fromarray(np.random.RandomState(0).randint(0, 255, (64, 64, 3), dtype=np.uint8)), "PNG")
    with pytest.raises(ImageInputError) as e:
        _load(data[: len(data) // 2])
    assert "corrupt" in e.value.message or "truncated" in e.value.message


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 10, 20))  # white strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    out = _load(_bytes(im, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (20, 40)
    assert np.asarray(out)[:5, :, 0].mean() > 200  # the white strip is now at the top


@pytest.mark.parametrize(
    ("mode", "value"),
    [
        ("RGBA", (255, 0, 0, 255)),
        ("P", 3),
        ("L", 128),
        ("1", 1),
        ("CMYK", (0, 255, 255, 0)),
        ("I;16", 40000),
        ("LA", (100, 255)),
    ],
)
def test_modes_are_normalized_to_rgb(mode, value):
    im = Image.new(mode, (8, 8), value)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = _load(_bytes(im, fmt))
    assert out.mode == "RGB" and out.size == (8, 8)


def test_sixteen_bit_is_scaled_not_clipped():
    out = _load(_bytes(Image.new("I;16", (4, 4), 32768), "PNG"))
    assert 120 <= np.asarray(out)[0, 0, 0] <= 135


def test_transparent_pixels_become_white():
    out = _load(_bytes(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), "PNG"))
    assert np.asarray(out).min() == 255


def test_mask_normalization():
    m = _load(_bytes(Image.new("RGB", (8, 8), (255, 255, 255)), "PNG"), mask=True)
    assert m.mode == "L" and np.asarray(m).min() == 255
    alpha = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    alpha.paste((0, 0, 0, 255), (0, 0, 4, 8))
    m = _load(_bytes(alpha, "PNG"), mask=True)
    assert np.asarray(m)[:, :4].min() == 255 and np.asarray(m)[:, 4:].max() == 0


def test_animated_webp_takes_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    out = _load(buf.getvalue())
    assert tuple(np.asarray(out)[0, 0]) == (255, 0, 0)


@pytest.mark.parametrize("fmt", ["JPG", "PNG", "WEBP"])
def test_encode_embeds_recipe_and_is_deterministic(fmt):
    im = Image.fromarray(np.random.RandomState(1).randint(0, 255, (32, 48, 3), dtype=np.uint8))
    recipe = '{"prompt":"caf\\u00e9 <b>&","seed":1}'
    a = encode(im, fmt=fmt, quality=90, recipe_json=recipe)
    b = encode(im, fmt=fmt, quality=90, recipe_json=recipe)
    assert a == b
    assert read_embedded(a) == recipe
    assert Image.open(io.BytesIO(a)).format == {"JPG": "JPEG"}.get(fmt, fmt)


def test_quality_changes_jpeg_size():
    im = Image.fromarray(np.random.RandomState(1).randint(0, 255, (64, 64, 3), dtype=np.uint8))
    assert len(encode(im, fmt="JPG", quality=20)) < len(encode(im, fmt="JPG", quality=99))


def _progressive_with_repeated_scans(repeats: int) -> bytes:
    """A progressive JPEG whose last scan is repeated: each copy makes the decoder walk the image again."""
    rng = np.random.default_rng(0)
    data = _bytes(Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)), "JPEG", progressive=True)
    end, last = data.rindex(b"\xff\xd9"), data.rindex(b"\xff\xda")
    return data[:end] + data[last:end] * repeats + b"\xff\xd9"


def test_progressive_jpeg_with_hundreds_of_scans_is_refused_before_decoding():
    normal = _bytes(Image.new("RGB", (64, 48), (10, 20, 30)), "JPEG", progressive=True)
    assert _load(normal).size == (64, 48)  # a standard progressive JPEG (10 scans) is fine
    bomb = _progressive_with_repeated_scans(600)
    t0 = time.perf_counter()
    with pytest.raises(ImageInputError, match="scans"):
        _load(bomb)
    assert time.perf_counter() - t0 < 1.0


def test_decompression_bomb_error_quotes_the_documented_limit():
    with pytest.raises(ImageInputError) as e:
        _load(_png_with_size(20000, 20000))  # 400 MP: past Pillow's own limit too
    assert "16.8 MP" in e.value.message and "178956970" not in e.value.message and "(400.0 MP)" in e.value.message
