import numpy as np
import pytest
from PIL import Image, ImageFilter

from rabbit_serve.errors import ClientError
from rabbit_serve.model_spec import ModelSpec, load_spec
from rabbit_serve.preprocessing import (
    decode_rgb,
    inspect_image,
    preprocess,
    resize_and_crop,
    to_tensor,
)
from rabbit_serve.settings import DEFAULT_MODEL_PATH
from tests.images import bomb_png, encode, sample

MAX_PIXELS = 40_000_000
# The shipped model's spec: the literal 224 / 256 / 127 / 128 below hold it to the contract.
SPEC = load_spec(DEFAULT_MODEL_PATH)


def test_output_is_nchw_float32_normalised():
    tensor = preprocess(sample("coffee.jpg"), SPEC, MAX_PIXELS)
    assert tensor.shape == (3, 224, 224) and tensor.dtype == np.float32
    assert tensor.min() >= (0 - 127) / 128 and tensor.max() <= (255 - 127) / 128


def test_normalisation_is_x_minus_127_over_128():
    image = Image.new("RGB", (300, 260), (127, 255, 0))
    tensor = to_tensor(resize_and_crop(image, SPEC), SPEC)
    assert tensor[0].mean() == pytest.approx(0.0)
    assert tensor[1].mean() == pytest.approx(1.0)
    assert tensor[2].mean() == pytest.approx(-127 / 128)


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (224, 224), (100, 50), (3000, 256)])
def test_short_side_256_then_centre_crop_224(size):
    assert resize_and_crop(Image.new("RGB", size), SPEC).size == (224, 224)


def test_centre_crop_keeps_the_middle():
    # A wide image, red on the left third, green in the middle, blue on the right.
    image = Image.new("RGB", (768, 256))
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        image.paste(colour, (i * 256, 0, (i + 1) * 256, 256))
    cropped = np.asarray(resize_and_crop(image, SPEC))
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


def test_large_jpeg_is_decoded_in_full_by_default():
    # Reduced-scale (DCT) decoding moved served scores by up to 0.11 from the model's own
    # preprocessing, so it is opt-in.
    big = encode(Image.new("RGB", (4000, 3000), (10, 200, 30)), "JPEG")
    assert decode_rgb(big, MAX_PIXELS).size == (4000, 3000)


@pytest.mark.parametrize("short_side", [256, 512, 1000])
def test_draft_decoding_keeps_the_short_side_it_was_asked_for(short_side):
    big = encode(Image.new("RGB", (4000, 3000), (10, 200, 30)), "JPEG")
    decoded = decode_rgb(big, MAX_PIXELS, draft_short_side=short_side)
    assert min(decoded.size) >= short_side and decoded.size[0] < 4000


def test_fast_jpeg_decode_keeps_twice_the_resize_short_side():
    big = encode(Image.new("RGB", (4000, 3000), (10, 200, 30)), "JPEG")
    fast = preprocess(big, SPEC, MAX_PIXELS, fast_jpeg_decode=True)
    exact = preprocess(big, SPEC, MAX_PIXELS)
    assert fast.shape == exact.shape == (3, 224, 224)
    # A flat colour survives any decode scale.
    assert np.abs(fast - exact).max() <= 2 / 128


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
        preprocess(truncated, SPEC, MAX_PIXELS)
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
    fast = np.asarray(resize_and_crop(image, SPEC), dtype=np.int16)
    assert np.abs(fast - _resize_then_crop(image)).max() <= 1


def test_to_tensor_is_the_model_normalisation():
    pixels = np.arange(224 * 224 * 3, dtype=np.uint32).reshape(224, 224, 3) % 256
    tensor = to_tensor(Image.fromarray(pixels.astype(np.uint8)), SPEC)
    expected = (pixels.astype(np.float32) - 127) / 128
    assert tensor.dtype == np.float32
    assert np.array_equal(tensor, expected.transpose(2, 0, 1))


OTHER = ModelSpec(
    name="other",
    input_size=160,
    resize_short_side=182,
    crop=160,
    mean=(123.675, 116.28, 103.53),
    std=(58.395, 57.12, 57.375),
    layout="NCHW",
    color="RGB",
    num_classes=10,
    labels="labels.txt",
)


def test_another_spec_sets_the_resize_the_crop_and_the_per_channel_normalisation():
    image = Image.new("RGB", (400, 300), (200, 100, 50))
    tensor = preprocess(encode(image, "PNG"), OTHER, MAX_PIXELS)
    assert tensor.shape == (3, 160, 160) and tensor.dtype == np.float32
    for channel, value in enumerate((200, 100, 50)):
        expected = (value - OTHER.mean[channel]) / OTHER.std[channel]
        np.testing.assert_allclose(tensor[channel], expected, rtol=1e-6)


@pytest.mark.parametrize("size", [(451, 300), (300, 451), (160, 160), (1920, 1080)])
def test_one_pass_resize_matches_resize_then_crop_for_another_spec(size):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(2))
    scale = 182 / min(size)
    resized_size = (max(160, round(size[0] * scale)), max(160, round(size[1] * scale)))
    resized = image.resize(resized_size, Image.Resampling.BILINEAR)
    left, top = (resized_size[0] - 160) // 2, (resized_size[1] - 160) // 2
    slow = np.asarray(resized.crop((left, top, left + 160, top + 160)), dtype=np.int16)
    fast = np.asarray(resize_and_crop(image, OTHER), dtype=np.int16)
    assert np.abs(fast - slow).max() <= 1
