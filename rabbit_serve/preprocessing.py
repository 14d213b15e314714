"""Image bytes to model input, the way the model's spec says.

RGB, the short side resized to ``spec.resize_short_side`` (bilinear, antialiased as
Pillow resizes), the centre ``spec.crop`` square, ``(x - mean) / std`` as float32,
laid out NCHW. Every pixel of the photo is decoded unless the caller opts into the
fast JPEG decode (see :func:`decode_rgb`).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from rabbit_serve.errors import ClientError
from rabbit_serve.model_spec import ModelSpec

# The fast decode keeps at least this many times the resize's short side, so the
# antialiased resize still does most of the filtering (see docs/performance.md).
FAST_DECODE_MARGIN = 2

# What clients may send. Pillow would also open PostScript/EPS (by running
# Ghostscript on the client's file), ICNS, PSD and more: none of that is accepted.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ClientError(422, "image is empty")
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel cap below with a clear message instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise ClientError(
            422, f"data is not an image in a supported format ({', '.join(ALLOWED_FORMATS)})"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ClientError(413, f"image has too many pixels: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ClientError(422, f"image header could not be read: {exc}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ClientError(422, f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ClientError(
            413,
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
        )
    return image


def inspect_image(data: bytes, max_pixels: int) -> ImageInfo:
    """Cheap validation from the header alone: format and size, no pixel decoding."""
    image = _open(data, max_pixels)
    return ImageInfo(format=str(image.format), width=image.width, height=image.height)


def decode_rgb(data: bytes, max_pixels: int, draft_short_side: int = 0) -> Image.Image:
    """Decode to RGB; a truncated or corrupt file raises a 422 ``ClientError``.

    ``draft_short_side`` > 0 lets a JPEG decode at a reduced scale (DCT scaling, 1/2 to
    1/8) whose short side stays at least that long: several times less work on a phone
    photo, but DCT scaling is not the bilinear filter of the model's contract, so
    scores move (up to 0.06 at twice the resize's short side, 0.11 at once). 0 decodes
    every pixel.
    """
    image = _open(data, max_pixels)
    if draft_short_side > 0 and image.format == "JPEG":
        # Pillow keeps both sides >= the requested ones, so a square request bounds
        # the short side.
        image.draft("RGB", (draft_short_side, draft_short_side))
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise ClientError(422, f"image could not be decoded: {exc}") from None
    if image.mode != "RGB":
        if image.mode in ("RGBA", "LA", "PA") or (
            image.mode == "P" and "transparency" in image.info
        ):
            # Composite transparency onto white rather than letting it become black.
            rgba = image.convert("RGBA")
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            image = background
        else:
            image = image.convert("RGB")
    return image


def resize_and_crop(image: Image.Image, spec: ModelSpec) -> Image.Image:
    """Short side to ``spec.resize_short_side``, then the centre ``spec.crop`` square,
    in one resampling pass.

    Resampling only the source region that lands in the crop gives the same pixels as
    resizing the whole image and cropping (within one grey level of rounding), for
    about 40 % of the work.
    """
    crop = spec.crop
    width, height = image.size
    scale = spec.resize_short_side / min(width, height)
    new_width = max(crop, round(width * scale))
    new_height = max(crop, round(height * scale))
    left = (new_width - crop) // 2
    top = (new_height - crop) // 2
    x_scale, y_scale = width / new_width, height / new_height
    box = (
        left * x_scale,
        top * y_scale,
        (left + crop) * x_scale,
        (top + crop) * y_scale,
    )
    return image.resize((crop, crop), Image.Resampling.BILINEAR, box=box)


def to_tensor(image: Image.Image, spec: ModelSpec) -> np.ndarray:
    """HWC uint8 RGB to CHW float32, ``(x - mean) / std`` per channel."""
    pixels = np.asarray(image)
    height, width, _ = pixels.shape
    out = np.empty((3, height, width), dtype=np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1)
    # One pass that converts, transposes and centres, then one that scales in place.
    np.subtract(pixels.transpose(2, 0, 1), mean, out=out, dtype=np.float32)
    out /= std
    return out


def preprocess(
    data: bytes, spec: ModelSpec, max_pixels: int, fast_jpeg_decode: bool = False
) -> np.ndarray:
    """Encoded image bytes to one ``spec.input_shape`` float32 array."""
    draft = FAST_DECODE_MARGIN * spec.resize_short_side if fast_jpeg_decode else 0
    return to_tensor(resize_and_crop(decode_rgb(data, max_pixels, draft), spec), spec)
