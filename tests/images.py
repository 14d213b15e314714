"""Test images made on the fly from the committed samples (no downloads)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

from PIL import Image, ImageOps

IMAGES_DIR = Path(__file__).resolve().parent.parent / "examples" / "images"
CAT_CLASSES = frozenset(range(281, 286))
ESPRESSO = 967


def sample(name: str) -> bytes:
    return (IMAGES_DIR / name).read_bytes()


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def variants(name: str, count: int) -> list[bytes]:
    """``count`` distinct encodings of one photo (crops, flips, qualities, formats)
    that keep its class, so a swapped answer between requests would show."""
    base = Image.open(IMAGES_DIR / name).convert("RGB")
    out: list[bytes] = []
    for i in range(count):
        image = base
        if i % 2:
            image = ImageOps.mirror(image)
        shrink = 1.0 - 0.03 * (i % 5)
        w, h = image.size
        cw, ch = int(w * shrink), int(h * shrink)
        image = image.crop(((w - cw) // 2, (h - ch) // 2, (w + cw) // 2, (h + ch) // 2))
        if i % 7 == 3:
            out.append(encode(image, "PNG"))
        else:
            out.append(encode(image, "JPEG", quality=70 + i % 25))
    assert len(set(out)) == count
    return out


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` RGB pixels: a few hundred
    bytes that would need gigabytes if anything decoded it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * width) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
