import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from rayood.data.decode import (
    BatchDecoder,
    DecodeError,
    DecodeLimits,
    decode_image,
    formats_for,
    pixels_from_column,
    pixels_to_column,
)
from tests.images import bad_images, encode, good_images


@pytest.mark.parametrize("name", sorted(good_images()))
def test_every_supported_mode_decodes_to_rgb_at_native_size(name):
    pixels = decode_image(good_images()[name], 32)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    assert pixels.std() > 5, "a gradient must survive decoding"


@pytest.mark.parametrize("name", sorted(bad_images()))
def test_bad_input_raises_a_decode_error_naming_the_cause(name):
    data, cause = bad_images()[name]
    with pytest.raises(DecodeError, match=cause):
        decode_image(data, 32)


def test_limits_are_configurable():
    data = good_images()["rgb.png"]
    with pytest.raises(DecodeError, match="max_bytes"):
        decode_image(data, 32, DecodeLimits(max_bytes=10))
    with pytest.raises(DecodeError, match="max_pixels"):
        decode_image(data, 32, DecodeLimits(max_pixels=100))


def test_only_the_configured_image_formats_are_decoded():
    """PIL knows formats that run external programs (EPS -> Ghostscript): untrusted bytes never reach them."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\nshowpage\n"
    with pytest.raises(DecodeError, match="not an image"):
        decode_image(eps, 8)
    assert formats_for(("jpg", "jpeg", "PNG", "heic")) == ("JPEG", "PNG")
    png = good_images()["rgb.png"]
    assert decode_image(png, 8, DecodeLimits(formats=formats_for(("png",)))).shape == (8, 8, 3)
    with pytest.raises(DecodeError, match="not an image"):
        decode_image(good_images()["rgb.jpg"], 8, DecodeLimits(formats=formats_for(("png",))))


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` and whose pixel data is one short chunk: PIL reads the
    size when it opens it, and decoding finds it truncated."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_max_pixels_above_pils_own_bomb_limit_takes_effect():
    """100M pixels is above PIL's default 89.5M: a configured max_pixels of 200M must let it through to
    decoding (where this header-only file is truncated), and the default 50M must reject it by size."""
    header = png_header(10_000, 10_000)
    with pytest.raises(DecodeError, match="truncated or corrupt"):
        decode_image(header, 8, DecodeLimits(max_pixels=200_000_000))
    with pytest.raises(DecodeError, match="max_pixels 50000000"):
        decode_image(header, 8, DecodeLimits())


def test_screening_limits_come_from_the_screen_config_else_the_bundle():
    from rayood.config import PreprocessSettings, ScreenSettings
    from rayood.screen.pipeline import screening_limits

    bundle = PreprocessSettings(max_bytes=1000, max_pixels=2000)
    assert screening_limits(ScreenSettings(), bundle, ("png",)) == DecodeLimits(1000, 2000, ("PNG",))
    assert screening_limits(ScreenSettings(max_pixels=5), bundle, ("png",)) == DecodeLimits(1000, 5, ("PNG",))


def test_sixteen_bit_is_scaled_not_clipped():
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    pixels = decode_image(encode(Image.fromarray(ramp), "PNG"), 8)
    assert pixels.max() == round(63000 / 257)
    assert len(np.unique(pixels[..., 0])) > 32


def test_transparency_is_composited_on_white():
    transparent = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    pixels = decode_image(encode(transparent, "PNG"), 8)
    assert (pixels == 255).all()


def test_non_square_images_are_centre_cropped():
    wide = np.zeros((10, 30, 3), dtype=np.uint8)
    wide[:, 10:20] = 255  # only the centre square is white
    pixels = decode_image(encode(Image.fromarray(wide), "PNG"), 10)
    assert pixels.min() == 255


def test_pixel_column_round_trip_keeps_offsets():
    pixels = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    column = pixels_to_column(pixels)
    np.testing.assert_array_equal(pixels_from_column(column, 4), pixels)
    np.testing.assert_array_equal(pixels_from_column(column.slice(2), 4), pixels[2:])
    chunked = pa.chunked_array([column.slice(0, 2), column.slice(2)])
    np.testing.assert_array_equal(pixels_from_column(chunked, 4), pixels)


def test_batch_decoder_keeps_every_row_and_marks_errors():
    good, bad = good_images(), bad_images()
    names = ["rgb.png", "empty.jpg", "cmyk.jpg", "truncated.jpg", "null", "no-id"]
    images = [good["rgb.png"], bad["empty.jpg"][0], good["cmyk.jpg"], bad["truncated.jpg"][0], None, good["rgb.png"]]
    ids = names[:-1] + [None]
    batch = pa.table({"img": pa.array(images, pa.binary()), "key": ids, "label": [1, 2, 3, 4, 5, 6]})
    decoder = BatchDecoder(
        image_column="img", id_column="key", source="src", size=16, limits=DecodeLimits(), passthrough=("label",)
    )
    out = decoder(batch)
    assert out.num_rows == 6
    assert out.column("status").to_pylist() == ["ok", "error", "ok", "error", "error", "error"]
    errors = out.column("error").to_pylist()
    assert errors[0] is None and "empty" in errors[1] and "null" in errors[4] and "missing id" in errors[5]
    assert out.column("label").to_pylist() == [1, 2, 3, 4, 5, 6]
    assert out.column("pixels").null_count == 4
    assert pixels_from_column(out.column("pixels"), 16)[0].std() > 5


def test_batch_decoder_takes_known_errors_from_the_error_column_without_decoding():
    good = good_images()["rgb.png"]
    batch = pa.table(
        {"img": pa.array([good, good], pa.binary()), "key": ["a", "b"], "why": [None, "shard is truncated"]}
    )
    decoder = BatchDecoder(
        image_column="img", id_column="key", source="s", size=8, limits=DecodeLimits(), error_column="why"
    )
    out = decoder(batch)
    assert out.column("status").to_pylist() == ["ok", "error"]
    assert out.column("error").to_pylist() == [None, "shard is truncated"]
    assert out.column("pixels").null_count == 1
