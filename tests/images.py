"""Real encoded images for tests: every PIL mode worth supporting, and the bad inputs users hit."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def gradient(size: tuple[int, int] = (40, 30)) -> np.ndarray:
    width, height = size
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None].repeat(width, 1)
    return np.stack([x, y, 255 - x], axis=2).astype(np.uint8)


def good_images() -> dict[str, bytes]:
    """File name -> bytes of images that must decode (different formats and modes)."""
    rgb = Image.fromarray(gradient())
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    palette_transparent = rgb.convert("P")
    palette_transparent.info["transparency"] = 0
    sixteen = Image.fromarray(gradient()[..., 0].astype(np.uint16) * 257)
    return {
        "rgb.jpg": encode(rgb, "JPEG", quality=90),
        "rgb.png": encode(rgb, "PNG"),
        "grey.png": encode(rgb.convert("L"), "PNG"),
        "bilevel.bmp": encode(rgb.convert("1"), "BMP"),
        "rgba.png": encode(rgba, "PNG"),
        "palette.gif": encode(rgb.convert("P"), "GIF"),
        "palette_transparent.png": encode(palette_transparent, "PNG"),
        "cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG"),
        "sixteen_bit.png": encode(sixteen, "PNG"),
        "lossless.webp": encode(rgb, "WEBP", lossless=True),
        "rgb.tiff": encode(rgb, "TIFF"),
    }


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels but holds almost no data: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def bad_images() -> dict[str, tuple[bytes, str]]:
    """File name -> (bytes, a word the error message must contain)."""
    jpeg = encode(Image.fromarray(gradient((64, 64))), "JPEG", quality=90)
    return {
        "empty.jpg": (b"", "empty"),
        "text.jpg": (b"this is not an image at all\n" * 10, "not an image"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "corrupt.png": (encode(Image.fromarray(gradient()), "PNG")[:60] + b"\x00garbage" * 20, "corrupt"),
        "bomb.png": (png_header_only(60_000, 60_000), "decompression bomb"),
    }
