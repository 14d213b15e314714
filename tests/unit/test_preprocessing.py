import numpy as np
import pytest
from PIL import Image, ImageFilter

from rabbit_serve.errors import ClientError
from rabbit_serve.preprocessing import (
    decode_rgb,
    inspect_image,
    preprocess,
    resize_and_crop,
    to_tensor,
)
from tests.images import bomb_png, encode, sample

MAX_PIXELS = 40_000_000


def test_output_is_nchw_float32_normalised():
    tensor = preprocess(sample("coffee.jpg"), MAX_PIXELS)
    assert tensor.shape == (3, 224, 224) and tensor.dtype == np.float32
    assert tensor.min() >= (0 - 127) / 128 and tensor.max() <= (255 - 127) / 128


def test_normalisation_is_x_minus_127_over_128():
    image = Image.new("RGB", (300, 260), (127, 255, 0))
    tensor = to_tensor(resize_and_crop(image))
    assert tensor[0].mean() == pytest.approx(0.0)
    assert tensor[1].mean() == pytest.approx(1.0)
    assert tensor[2].mean() == pytest.approx(-127 / 128)


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (224, 224), (100, 50), (3000, 256)])
def test_short_side_256_then_centre_crop_224(size):
    assert resize_and_crop(Image.new("RGB", size)).size == (224, 224)


def test_centre_crop_keeps_the_middle():
    # A wide image, red on the left third, green in the middle, blue on the right.
    image = Image.new("RGB", (768, 256))
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        image.paste(colour, (i * 256, 0, (i + 1) * 256, 256))
    cropped = np.asarray(resize_and_crop(image))
    assert tuple(cropped[112, 112]) == (0, 255, 0)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16"])
def test_any_mode_becomes_rgb(mode):
    image = Image.new(mode, (64, 64))
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    assert decode_rgb(encode(image, fmt), MAX_PIXELS).mode == "RGB"


def test_transparent_pixels_become_white_not_black():
    image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    decoded = decode_rgb(encode(image, "PNG"), MAX_PIXELS)
    assert decoded.getpixel((5, 5)) == (255, 255, 255)


def test_large_jpeg_is_decoded_at_reduced_scale():
    big = encode(Image.new("RGB", (4000, 3000), (10, 200, 30)), "JPEG")
    decoded = decode_rgb(big, MAX_PIXELS)
    assert min(decoded.size) >= 256 and decoded.size[0] < 4000


@pytest.mark.parametrize(
    "data,status,message",
    [
        (b"", 422, "empty"),
        (b"this is plain text, not a picture", 422, "not an image"),
        (b"%PDF-1.4\n%...", 422, "not an image"),
    ],
)
def test_non_images_are_422(data, status, message):
    with pytest.raises(ClientError) as err:
        inspect_image(data, MAX_PIXELS)
    assert err.value.status == status and message in err.value.message


def test_truncated_jpeg_passes_the_header_check_but_fails_decoding():
    truncated = sample("chelsea.jpg")[:5000]
    assert inspect_image(truncated, MAX_PIXELS).format == "JPEG"
    with pytest.raises(ClientError) as err:
        preprocess(truncated, MAX_PIXELS)
    assert err.value.status == 422 and "decoded" in err.value.message


def test_decompression_bomb_is_refused_from_the_header():
    with pytest.raises(ClientError) as err:
        inspect_image(bomb_png(), MAX_PIXELS)
    assert err.value.status == 413


def test_pixel_cap_is_ours_not_pillows():
    data = encode(Image.new("RGB", (200, 200)), "PNG")
    with pytest.raises(ClientError) as err:
        inspect_image(data, max_pixels=30_000)
    assert err.value.status == 413 and "200x200" in err.value.message
    assert inspect_image(data, max_pixels=40_000).width == 200


def test_formats_outside_the_allowlist_are_refused_from_the_header():
    # Pillow would hand EPS to Ghostscript; we never decode it at all.
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ClientError) as err:
        inspect_image(eps, MAX_PIXELS)
    assert err.value.status == 422 and "supported format" in err.value.message


def _resize_then_crop(image: Image.Image) -> np.ndarray:
    """The contract written the slow, obvious way."""
    width, height = image.size
    scale = 256 / min(width, height)
    size = (max(224, round(width * scale)), max(224, round(height * scale)))
    resized = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - 224) // 2, (size[1] - 224) // 2
    return np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.int16)


@pytest.mark.parametrize("size", [(451, 300), (300, 451), (224, 224), (100, 80), (1920, 1080)])
def test_one_pass_resize_matches_resize_then_crop(size):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(2))
    fast = np.asarray(resize_and_crop(image), dtype=np.int16)
    assert np.abs(fast - _resize_then_crop(image)).max() <= 1


def test_to_tensor_is_the_model_normalisation():
    pixels = np.arange(224 * 224 * 3, dtype=np.uint32).reshape(224, 224, 3) % 256
    tensor = to_tensor(Image.fromarray(pixels.astype(np.uint8)))
    expected = (pixels.astype(np.float32) - 127) / 128
    assert tensor.dtype == np.float32
    assert np.array_equal(tensor, expected.transpose(2, 0, 1))
