"""Encoded image bytes -> fixed-size RGB pixels, one row at a time, never raising.

Every failure (empty, oversized, not an image, truncated, decompression bomb, unsupported mode) becomes
an ``error`` row with a message naming the cause, so one bad file can never kill a screening job or
disappear from the report. Decoded pixels travel through Ray Data as one fixed-size binary column of
uint8 RGB at the bundle's native resolution: four times smaller than float tensors, and Arrow-native.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps, UnidentifiedImageError

from rayood.config import IMAGE_EXTENSIONS
from rayood.report.columns import STATUS_ERROR, STATUS_OK


class DecodeError(ValueError):
    """Why one input could not become pixels."""


def formats_for(extensions: tuple[str, ...]) -> tuple[str, ...]:
    """PIL's format names for file extensions (``jpg`` -> ``JPEG``); extensions PIL cannot read are left out."""
    known = Image.registered_extensions()
    return tuple(sorted({known[f".{ext.lower()}"] for ext in extensions if f".{ext.lower()}" in known}))


@dataclass(frozen=True)
class DecodeLimits:
    """``formats``: the PIL formats decoding may use. Anything else is "not an image": PIL knows formats that
    run external programs (EPS goes to Ghostscript) or are rarely fuzzed, and the bytes are untrusted."""

    max_bytes: int = 64 * 2**20
    max_pixels: int = 50_000_000
    formats: tuple[str, ...] = formats_for(IMAGE_EXTENSIONS)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Transparency is composited on white, 16-bit depth scaled, not clipped."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        scaled = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if mode == "F":
        raise DecodeError("unsupported image mode F (32-bit float)")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _centre_square(image: Image.Image) -> Image.Image:
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def decode_image(data: bytes | None, size: int, limits: DecodeLimits = DecodeLimits()) -> np.ndarray:
    """Decode, centre-crop to a square and resize to ``size`` x ``size``; returns uint8 (size, size, 3).

    Raises :class:`DecodeError` with the cause for anything that is not a readable image.
    """
    if data is None:
        raise DecodeError("no image bytes (null)")
    if len(data) == 0:
        raise DecodeError("empty file (0 bytes)")
    if len(data) > limits.max_bytes:
        raise DecodeError(f"file too large: {len(data)} bytes > max_bytes {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # PIL warns above its own global (89.5M by default) while headers are read: align it with ours,
            # else a max_pixels above it could never take effect.
            Image.MAX_IMAGE_PIXELS = limits.max_pixels
            image = Image.open(io.BytesIO(data), formats=limits.formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DecodeError(
            f"image too large (decompression bomb guard, max_pixels {limits.max_pixels}): {error}"
        ) from None
    except UnidentifiedImageError:  # PIL's message names the BytesIO object's address: one message per row
        raise DecodeError(f"not an image: none of the formats {', '.join(limits.formats)} recognises it") from None
    except Exception as error:  # a known format whose header is cut short or damaged
        raise DecodeError(f"truncated or corrupt image: {error}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise DecodeError(f"image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise DecodeError(
            f"image too large: {width}x{height} = {width * height} pixels > max_pixels {limits.max_pixels}"
            " (decompression bomb guard)"
        )
    try:
        if image.format == "JPEG":
            image.draft("RGB", (2 * size, 2 * size))  # DCT-domain downscale: far faster for big photos
        image.load()
        image = ImageOps.exif_transpose(image)
        image = _to_rgb(image)
    except DecodeError:
        raise
    except Exception as error:
        raise DecodeError(f"truncated or corrupt image: {error}") from None
    image = _centre_square(image)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def decode_images(images: Iterable[bytes | None], size: int, limits: DecodeLimits = DecodeLimits()) -> np.ndarray:
    """Images known to decode (a benchmark set, an evaluation set) as one uint8 array (N, size, size, 3); the
    first that does not raises its DecodeError. Corpora go through :class:`BatchDecoder`, which never raises."""
    return np.stack([decode_image(data, size, limits) for data in images])


def pixels_to_column(pixels: np.ndarray) -> pa.FixedSizeBinaryArray:
    """(N, S, S, 3) uint8 -> one fixed-size binary value per row (zero-copy)."""
    count = pixels.shape[0]
    width = int(np.prod(pixels.shape[1:]))
    flat = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(count, width)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), count, [None, pa.py_buffer(flat)])


def pixels_from_column(column: pa.Array | pa.ChunkedArray, size: int) -> np.ndarray:
    """Inverse of :func:`pixels_to_column`: returns (N, size, size, 3) uint8."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    count = len(column)
    width = size * size * 3
    if column.type != pa.binary(width):
        raise ValueError(f"pixel column has type {column.type}, expected {pa.binary(width)}")
    if count == 0:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    buffer = column.buffers()[1]
    flat = np.frombuffer(buffer, dtype=np.uint8, count=count * width, offset=column.offset * width)
    return flat.reshape(count, size, size, 3)


def _image_bytes(column: pa.ChunkedArray) -> list[bytes | None]:
    """Bytes per row from a binary column, or from a ``{bytes, path}`` struct column (Hugging Face layout)."""
    if pa.types.is_struct(column.type):
        column = pa.chunked_array([chunk.field("bytes") for chunk in column.chunks], column.type.field("bytes").type)
    return column.to_pylist()


def _is_binary(column: pa.ChunkedArray) -> bool:
    return pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)


def text_ids(column: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """The ids as ``ids_as_text`` gives them, as Arrow strings: text and numeric ids never go through Python."""
    return pa.array(ids_as_text(column)[0], pa.string()) if _is_binary(column) else column.cast(pa.string())


def ids_as_text(column: pa.ChunkedArray) -> tuple[list[str | None], list[str | None]]:
    """Row ids as text, and per row why the id is unusable (or None). A binary id that is not UTF-8 keeps a
    printable form (``\\x`` escapes) so that its row is still reported, as an error."""
    if not _is_binary(column):
        ids = column.cast(pa.string()).to_pylist()
        return ids, [None] * len(ids)
    ids, problems = [], []
    for value in column.to_pylist():
        try:
            ids.append(value.decode("utf-8") if value is not None else None)
            problems.append(None)
        except UnicodeDecodeError:
            ids.append(value.decode("utf-8", "backslashreplace"))
            problems.append("id is not valid UTF-8 (shown with \\x escapes)")
    return ids, problems


class BatchDecoder:
    """A Ray Data ``map_batches`` function (pyarrow in, pyarrow out) that never raises on bad rows.

    Output columns: ``id``, ``source``, ``status``, ``error``, ``pixels`` (null on error rows) and the
    passthrough columns unchanged. A non-null value in ``error_column`` makes its row an error row with that
    message, without decoding: for readers that know a row is broken before its bytes are looked at.
    """

    def __init__(
        self,
        *,
        image_column: str,
        id_column: str,
        source: str,
        size: int,
        limits: DecodeLimits,
        passthrough: tuple[str, ...] = (),
        id_uri_prefix: str = "",
        error_column: str | None = None,
    ) -> None:
        self.image_column = image_column
        self.id_column = id_column
        self.source = source
        self.size = size
        self.limits = limits
        self.passthrough = passthrough
        self.id_uri_prefix = id_uri_prefix
        self.error_column = error_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        images = _image_bytes(batch.column(self.image_column))
        ids, id_problems = ids_as_text(batch.column(self.id_column))
        count = len(images)
        pixels = np.zeros((count, self.size, self.size, 3), dtype=np.uint8)
        errors: list[str | None] = batch.column(self.error_column).to_pylist() if self.error_column else [None] * count
        for row, data in enumerate(images):
            if ids[row] is None:
                errors[row] = f"missing id (null in column {self.id_column!r})"
                continue
            if id_problems[row] is not None:
                errors[row] = id_problems[row]
                continue
            if errors[row] is not None:
                continue
            try:
                pixels[row] = decode_image(data, self.size, self.limits)
            except DecodeError as error:
                errors[row] = str(error)
            except Exception as error:  # a decoder bug must still not lose the row
                errors[row] = f"unexpected decode failure: {type(error).__name__}: {error}"
        ok = np.array([error is None for error in errors])
        pixel_column = pixels_to_column(pixels)
        columns = {
            "id": pa.array([self.id_uri_prefix + i if i is not None else None for i in ids], pa.string()),
            "source": pa.array([self.source] * count, pa.string()),
            "status": pa.array([STATUS_OK if flag else STATUS_ERROR for flag in ok], pa.string()),
            "error": pa.array(errors, pa.string()),
            "pixels": pa.FixedSizeBinaryArray.from_buffers(
                pixel_column.type, count, [pa.array(ok).buffers()[1], pixel_column.buffers()[1]]
            )
            if count
            else pixel_column,
        }
        for name in self.passthrough:
            columns[name] = batch.column(name)
        return pa.table(columns)
