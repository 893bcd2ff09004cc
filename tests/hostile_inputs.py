"""Hostile report files and images, written byte by byte, with the reason each must be skipped for.

Shared by the extract, images and stage tests. Every builder returns real bytes (no mocks): XML
that libxml2 parses, PNG chunks with real CRCs, archives that tarfile writes.
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def report_xml(number: int, findings: str | None, image_ids: list[str], doctype: str = "") -> bytes:
    findings_xml = f'<AbstractText Label="FINDINGS">{findings}</AbstractText>' if findings else ""
    images = "".join(f'<parentImage id="{i}"><caption>x</caption></parentImage>' for i in image_ids)
    return (f'<?xml version="1.0" encoding="utf-8"?>{doctype}<eCitation><uId id="CXR{number}"/>'
            f'<MedlineCitation><Article><Abstract>{findings_xml}'
            f'<AbstractText Label="IMPRESSION">Normal.</AbstractText></Abstract></Article></MedlineCitation>'
            f"<MeSH><major>normal</major></MeSH>{images}</eCitation>").encode()


def billion_laughs(number: int) -> bytes:
    entities = '<!ENTITY lol0 "lol">' + "".join(
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    return report_xml(number, "Heart &lol9;", [], f"<!DOCTYPE eCitation [{entities}]>")


def entity_loop(number: int) -> bytes:
    return report_xml(number, "Heart &a;", [], '<!DOCTYPE eCitation [<!ENTITY a "&b;"><!ENTITY b "&a;">]>')


def external_entity(number: int, target: Path, image_ids: list[str] = ()) -> bytes:
    """A report whose findings end in a reference to a file (the XXE of the issue: `&leak;`)."""
    return report_xml(number, "Heart normal. &leak;", list(image_ids),
                      f'<!DOCTYPE eCitation [<!ENTITY leak SYSTEM "file://{target}">]>')


def external_parameter_entity(number: int, target: Path) -> bytes:
    return report_xml(number, "Heart normal.", [],
                      f'<!DOCTYPE eCitation [<!ENTITY % leak SYSTEM "file://{target}"> %leak;]>')


def undeclared_entity(number: int) -> bytes:
    return report_xml(number, "Heart normal. &leak;", [])


def internal_entity(number: int, image_ids: list[str]) -> bytes:
    """Legitimate XML: an internal entity, expanded like any XML reader would."""
    return report_xml(number, "&hn; No effusion.", image_ids,
                      '<!DOCTYPE eCitation [<!ENTITY hn "The heart is normal.">]>')


def wrong_encoding(number: int) -> bytes:
    """Declared UTF-8, written in Latin-1 (é as one byte 0xE9)."""
    return report_xml(number, "Caf\u00e9 shaped heart.", []).decode().encode("latin-1")


def unknown_encoding(number: int) -> bytes:
    return report_xml(number, "Heart normal.", []).replace(b'encoding="utf-8"', b'encoding="klingon-8"')


def truncated_xml(number: int) -> bytes:
    data = report_xml(number, "Heart normal.", [f"CXR{number}_IM-1"])
    return data[: len(data) * 2 // 3]


def binary_garbage(number: int) -> bytes:
    return np.random.default_rng(number).integers(0, 256, 3000, dtype=np.uint8).tobytes()


def mismatched_tags(number: int) -> bytes:
    return report_xml(number, "Heart normal.", []).replace(b"</Article>", b"</Artikel>")


# Each hostile report file and the reason (as counted, after "report: ") it must be skipped for.
HOSTILE_XML = {
    "billion_laughs": (billion_laughs, "entity expansion refused"),
    "entity_loop": (entity_loop, "entity expansion refused"),
    "undeclared_entity": (undeclared_entity, "undeclared entity"),
    "wrong_encoding": (wrong_encoding, "encoding error"),
    "unknown_encoding": (unknown_encoding, "encoding error"),
    "truncated": (truncated_xml, "truncated XML"),
    "binary_garbage": (binary_garbage, "not XML"),
    "png_bytes": (lambda n: png_bytes(8, 8), "not XML"),
    "empty": (lambda n: b"", "empty file"),
    "mismatched_tags": (mismatched_tags, "malformed XML"),
}


# -- images -------------------------------------------------------------------------------------


def png_bytes(width: int, height: int, value: int = 128, mode: str = "L") -> bytes:
    rng = np.random.default_rng(value)
    pixels = rng.integers(0, 256, (height, width), dtype=np.uint8) // 2 + value // 2
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A small file whose header claims width x height 8-bit gray pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_bad_crc() -> bytes:
    data = bytearray(png_bytes(40, 30))
    data[29] ^= 0xFF  # inside the IHDR chunk's CRC
    return bytes(data)


def png_garbage_data() -> bytes:
    """A correct header, then an IDAT chunk (valid CRC) whose content is not zlib data."""
    ihdr = struct.pack(">IIBBBBB", 40, 30, 8, 0, 0, 0, 0)
    return (PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"not zlib at all" * 20)
            + png_chunk(b"IEND", b""))


def png_cut_in_data() -> bytes:
    data = png_bytes(200, 200)
    return data[: len(data) // 2]


def png_cut_in_header() -> bytes:
    return png_bytes(40, 30)[:20]


# Each hostile image and the reason (as counted, after "image: ") it must be skipped for, by the stage
# that finds it: extract reads the first 24 bytes, prepare decodes the rest.
HOSTILE_PNG = {
    "zero_bytes": (lambda: b"", "zero-byte image file"),
    "gif": (lambda: b"GIF89a" + bytes(60), "not a PNG file"),
    "text": (lambda: b"these are my notes, not an image at all", "not a PNG file"),
    "cut_in_header": (png_cut_in_header, "truncated"),
    "cut_in_data": (png_cut_in_data, "truncated"),
    "bad_crc": (png_bad_crc, "corrupt PNG header"),
    "garbage_data": (png_garbage_data, "corrupt image data"),
    "bomb_40000": (lambda: png_claiming(40000, 40000), "too many pixels"),
    "bomb_9000": (lambda: png_claiming(9000, 9000), "too many pixels"),  # Pillow itself only warns here
}


# -- archives -----------------------------------------------------------------------------------


class Zeros(io.RawIOBase):
    """`size` zero bytes, read in pieces: a huge member is written without being held in memory."""

    def __init__(self, size: int, prefix: bytes = b""):
        self.left, self.prefix = size, prefix

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        head = self.prefix[:n]
        buffer[: len(head)] = head
        buffer[len(head):n] = bytes(n - len(head))
        self.prefix = self.prefix[n:]
        self.left -= n
        return n


def write_tgz(path: Path, members: dict[str, bytes | tuple[int, io.RawIOBase]]) -> Path:
    """A gzipped tar of `members` (name → bytes, or (size, stream) for a huge member), level 1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out, gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        for name, content in members.items():
            size, stream = content if isinstance(content, tuple) else (len(content), io.BytesIO(content))
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BufferedReader(stream) if isinstance(stream, Zeros) else stream)
    return path
