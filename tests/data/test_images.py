"""images: every PNG kind the collection and its re-exports use → one 8-bit square."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hostile_inputs import HOSTILE_PNG, png_bytes
from PIL import Image

from cxrgen.data.images import decode_jpeg, decode_png, fit_square
from cxrgen.errors import Unusable

SIZE = 64


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _gradient(width=80, height=40) -> np.ndarray:
    return np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))


def test_8bit_gray_keeps_values_and_pads_to_a_square():
    out = decode_png(_png(Image.fromarray(_gradient())), SIZE)
    assert out.shape == (SIZE, SIZE) and out.dtype == np.uint8
    # 80x40 scaled to 64x32, centred: 16 black rows above and below
    assert out[:16].max() == 0 and out[-16:].max() == 0
    assert out[32, 0] < 10 and out[32, -1] > 245


def test_16bit_is_windowed_to_its_own_range():
    values = (_gradient().astype(np.uint16) * 4 + 1000)  # a 12-bit-like range inside 16 bits
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    out = decode_png(_png(image), SIZE)
    assert out[32, 0] < 10 and out[32, -1] > 245, "16-bit range not stretched to 0..255"


def test_rgb_rgba_palette_and_1bit_become_gray():
    gray = Image.fromarray(_gradient())
    kinds = {
        "RGB": gray.convert("RGB"),
        "RGBA": gray.convert("RGBA"),
        "P": gray.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=64),
        "1": gray.convert("1"),
    }
    for mode, image in kinds.items():
        out = decode_png(_png(image), SIZE)
        assert out.shape == (SIZE, SIZE), mode
        assert out[32, -1] > out[32, 0], mode


def test_transparent_pixels_become_black():
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[..., :3] = 255
    rgba[:, 20:, 3] = 255  # left half fully transparent
    out = decode_png(_png(Image.fromarray(rgba, mode="RGBA")), 40)
    assert out[:, :19].max() == 0 and out[:, 21:].min() == 255


@pytest.mark.parametrize("data, reason", [(b"", "zero-byte"), (b"\x89PNG\r\n\x1a\n" + bytes(40), "corrupt PNG header")])
def test_bad_bytes_give_a_reason(data, reason):
    with pytest.raises(ValueError, match=reason):
        decode_png(data, SIZE)


def test_truncated_png_is_refused():
    data = _png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)))
    with pytest.raises(ValueError, match="^truncated"):
        decode_png(data[: len(data) // 2], SIZE)


def test_tall_image_is_padded_left_and_right():
    out = fit_square(np.full((100, 50), 200, dtype=np.uint8), 100)
    assert out[:, :24].max() == 0 and out[:, 76:].max() == 0 and out[:, 30:70].min() == 200


def test_the_five_real_images_decode(shared_sample: Path):
    for path in sorted((shared_sample / "images").glob("*.png")):
        out = decode_png(path.read_bytes(), 224)
        assert out.shape == (224, 224) and 20 < out.mean() < 235, path.name


@pytest.mark.parametrize("name", sorted(set(HOSTILE_PNG) - {"gif", "text"}) + ["not_an_image"])
def test_each_kind_of_bad_image_has_its_own_reason(name):
    """(gif / text are refused by extract's header check as "not a PNG file"; decode_png, which the
    app also uses for JPEG, calls what Pillow cannot identify "not an image".)"""
    make, reason = HOSTILE_PNG.get(name, (lambda: b"GIF89a" + bytes(60), "not an image"))
    with pytest.raises(Unusable) as info:
        decode_png(make(), SIZE)
    assert info.value.reason == reason, info.value
    assert "\n" not in str(info.value)


def test_a_valid_png_followed_by_junk_is_still_the_image():
    """Trailing bytes after IEND do not change the picture (their size is extract's bound to check)."""
    data = png_bytes(40, 30)
    assert np.array_equal(decode_png(data + bytes(10_000), SIZE), decode_png(data, SIZE))


def _jpeg(image: Image.Image, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def test_jpeg_is_decoded_at_a_reduced_scale_to_the_same_square():
    """A large JPEG (as MIMIC's films) decoded by libjpeg at 1/8 scale gives the square a full decode
    gives, within rounding: same shape, padding, and close values."""
    wide = np.tile(np.linspace(0, 255, 1600).astype(np.uint8), (1200, 1))
    data = _jpeg(Image.fromarray(wide))
    fast = decode_jpeg(data, SIZE)
    full = decode_png(data, SIZE)   # the PNG path decodes any image at full size
    assert fast.shape == full.shape == (SIZE, SIZE) and fast.dtype == np.uint8
    assert np.array_equal(fast == 0, full == 0)   # the same padding
    assert np.abs(fast.astype(int) - full.astype(int)).max() <= 2


def test_jpeg_small_rgb_and_refusals():
    rgb = Image.fromarray(np.stack([_gradient()] * 3, axis=-1), mode="RGB")
    out = decode_jpeg(_jpeg(rgb), SIZE)
    assert out.shape == (SIZE, SIZE) and out[SIZE // 2, -1] > 200   # bright right edge kept
    with pytest.raises(Unusable, match="zero-byte"):
        decode_jpeg(b"", SIZE)
    with pytest.raises(Unusable, match="not an image"):
        decode_jpeg(b"plain text, not a JPEG", SIZE)
    data = _jpeg(Image.fromarray(_gradient(400, 300)))
    with pytest.raises(Unusable, match="truncated"):
        decode_jpeg(data[: len(data) // 2], SIZE)
