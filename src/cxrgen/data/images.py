"""Decoding X-ray PNGs of any kind into one fixed-size 8-bit grayscale square.

8-bit and 16-bit grayscale, RGB, RGBA, palette and 1-bit PNGs are all accepted. 16-bit (and 32-bit
integer) images are windowed to their own min..max, since exported radiographs rarely use the full
16-bit range. The aspect ratio is kept: the longer side is scaled to `size` and the shorter one is
padded with black, centred (no crop, so no anatomy is lost at the edges).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

Image.MAX_IMAGE_PIXELS = 64_000_000  # far above any chest X-ray; stops decompression bombs


def to_gray8(image: Image.Image) -> np.ndarray:
    """Any PIL image → 2-D uint8 array."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        if high <= low:
            return np.zeros(values.shape, dtype=np.uint8)
        return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels are taken as black, the usual background of a radiograph.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def fit_square(gray: np.ndarray, size: int) -> np.ndarray:
    """Scale the longer side to `size`, pad the shorter with zeros, centred."""
    height, width = gray.shape
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = np.asarray(Image.fromarray(gray).resize((new_w, new_h), Image.Resampling.BILINEAR))
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top:top + new_h, left:left + new_w] = resized
    return out


def decode_png(data: bytes, size: int) -> np.ndarray:
    """PNG (or any Pillow-readable image) bytes → (size, size) uint8. ValueError with the reason."""
    if not data:
        raise ValueError("zero-byte image file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return fit_square(to_gray8(image), size)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"corrupt or unreadable image ({exc})") from None
