"""Decoding X-ray PNGs of any kind (and MIMIC-CXR's JPEGs) into one fixed-size 8-bit grayscale square.

8-bit and 16-bit grayscale, RGB, RGBA, palette and 1-bit PNGs are all accepted. 16-bit (and 32-bit
integer) images are windowed to their own min..max, since exported radiographs rarely use the full
16-bit range. The aspect ratio is kept: the longer side is scaled to `size` and the shorter one is
padded with black, centred (no crop, so no anatomy is lost at the edges).

JPEGs (decode_jpeg) are decoded at the smallest of libjpeg's 1/1, 1/2, 1/4, 1/8 scales that is still at
least `size` on both sides (Pillow's draft mode), then scaled the same way: a 2,500 x 3,000 MIMIC film
at 224 px is decoded at 1/8, many times faster than in full, for the same kind of square.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrgen.errors import Unusable

Image.MAX_IMAGE_PIXELS = 64_000_000  # far above any chest X-ray; stops decompression bombs
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_HEADER_BYTES = 33  # signature + the IHDR chunk


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


def _png_chunk_problem(data: bytes) -> Unusable:
    """Why bytes with a PNG signature did not open: a chunk cut short, a bad checksum, or else."""
    position = len(PNG_SIGNATURE)
    while position < len(data):
        if position + 8 > len(data):
            return Unusable("truncated", f"cut inside a chunk header at byte {position:,}")
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        end = position + 12 + length
        if end > len(data):
            return Unusable("truncated", f"{kind!r} chunk needs {end:,} bytes, the file has {len(data):,}")
        if zlib.crc32(data[position + 4:end - 4]) != struct.unpack(">I", data[end - 4:end])[0]:
            return Unusable("corrupt PNG header", f"{kind!r} chunk at byte {position:,} fails its CRC")
        if kind == b"IEND":
            break
        position = end
    if len(data) < PNG_HEADER_BYTES:
        return Unusable("truncated", f"{len(data)} bytes, shorter than a PNG header")
    return Unusable("corrupt PNG header", "PNG signature, but no readable IHDR chunk")


def _problem(data: bytes, exc: BaseException) -> Unusable:
    """The specific reason Pillow could not decode `data`."""
    message = " ".join(str(exc).split())
    if isinstance(exc, Image.DecompressionBombError):
        return Unusable("too many pixels", message)
    if isinstance(exc, UnidentifiedImageError):
        if data[:8] == PNG_SIGNATURE[: len(data[:8])]:
            return _png_chunk_problem(data)
        return Unusable("not an image", f"starts with {data[:8]!r}")
    if "truncated" in message.lower() or isinstance(exc, EOFError):
        return Unusable("truncated", message)
    return Unusable("corrupt image data", f"{type(exc).__name__}: {message}")


def decode_png(data: bytes, size: int) -> np.ndarray:
    """PNG (or any Pillow-readable image) bytes → (size, size) uint8.

    Unusable (a ValueError) with a specific reason: zero-byte image file, not an image, truncated,
    corrupt PNG header, corrupt image data, too many pixels (checked from the header, before decoding).
    """
    return _decode(data, size, draft=False)


def decode_jpeg(data: bytes, size: int) -> np.ndarray:
    """JPEG bytes → (size, size) uint8, decoded at a reduced scale where the JPEG allows (see above);
    any other image Pillow reads is decoded as decode_png does. Unusable as decode_png."""
    return _decode(data, size, draft=True)


def _decode(data: bytes, size: int, draft: bool) -> np.ndarray:
    if not data:
        raise Unusable("zero-byte image file")
    try:
        with warnings.catch_warnings():
            # Pillow warns when opening a header over its limit; the check below refuses it instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        with image:
            width, height = image.size
            if width * height > Image.MAX_IMAGE_PIXELS:
                # Pillow only warns up to twice its limit; refused here before any pixel is decoded.
                raise Unusable("too many pixels", f"{width} x {height} > {Image.MAX_IMAGE_PIXELS:,} pixels")
            if draft and image.format == "JPEG":
                image.draft("L", (size, size))
            image.load()
            return fit_square(to_gray8(image), size)
    except Unusable:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError, Image.DecompressionBombError,
            zlib.error) as exc:
        raise _problem(data, exc) from None
