"""Served scores equal the model's own: the classifier's preprocessing against the contract.

The contract (models/PROVENANCE.md) is written out plainly below: decode every pixel,
RGB, short side to 256 with Pillow's bilinear resize of the whole image, centre crop
224, ``(x - 127) / 128``, NCHW. The classifier's answers, on photos from 300 px to
12 MP made from the shipped samples, must stay within 0.01 of what the real model
gives on that input, with the same top-1.
"""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from deployments.onnx_model import OnnxClassifier
from rabbit_serve.preprocessing import decode_rgb, preprocess, resize_and_crop, to_tensor
from rabbit_serve.settings import DEFAULT_MODEL_PATH
from tests.images import IMAGES_DIR, encode, sample

MAX_SCORE_DIFF = 0.01
# The classifier resamples only the crop region, in one pass: rounding, never more.
MAX_GREY_LEVELS = 1
SIZES = {"1000px": 1000, "2000px": 2000, "12MP": None}


def reference_input(data: bytes) -> np.ndarray:
    """The preprocessing contract, the slow and obvious way."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    scale = 256 / min(width, height)
    size = (max(224, round(width * scale)), max(224, round(height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - 224) // 2, (size[1] - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    pixels = np.asarray(image, dtype=np.float32)
    return ((pixels - 127.0) / 128.0).transpose(2, 0, 1)


def upscaled(name: str, short_side: int | None) -> bytes:
    """A sample photo at phone size, saved as a camera would (JPEG quality 90)."""
    image = Image.open(IMAGES_DIR / name).convert("RGB")
    if short_side is None:
        size = (4000, 3000)
    else:
        scale = short_side / min(image.size)
        size = (round(image.width * scale), round(image.height * scale))
    return encode(image.resize(size, Image.Resampling.LANCZOS), "JPEG", quality=90)


def mosaic(size: tuple[int, int]) -> bytes:
    """The samples tiled at their own resolution: detail at every pixel, as in a real
    phone photo (an upscaled one is smooth), which is where reduced-scale decoding errs."""
    tiles = [Image.open(IMAGES_DIR / n).convert("RGB").crop((0, 0, 400, 300)) for n in NAMES]
    image = Image.new("RGB", size)
    corners = [(x, y) for y in range(0, size[1], 300) for x in range(0, size[0], 400)]
    for i, corner in enumerate(corners):
        image.paste(tiles[i % 2], corner)
    return encode(image, "JPEG", quality=90)


NAMES = ("chelsea.jpg", "coffee.jpg")
CASES = [
    *(f"{name}@300px" for name in NAMES),
    *(f"{name}@{size}" for size in SIZES for name in NAMES),
    "mosaic@2048px",
    "mosaic@12MP",
]


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    out = {f"{name}@300px": sample(name) for name in NAMES}
    for label, short_side in SIZES.items():
        for name in NAMES:
            out[f"{name}@{label}"] = upscaled(name, short_side)
    out["mosaic@2048px"] = mosaic((3072, 2048))
    out["mosaic@12MP"] = mosaic((4000, 3000))
    return out


@pytest.fixture(scope="module")
def classifier():
    model = OnnxClassifier(DEFAULT_MODEL_PATH)
    yield model
    model.close()


@pytest.fixture(scope="module")
def reference_model() -> ort.InferenceSession:
    return ort.InferenceSession(str(DEFAULT_MODEL_PATH), providers=["CPUExecutionProvider"])


def reference_scores(session: ort.InferenceSession, tensor: np.ndarray) -> np.ndarray:
    (logits,) = session.run(None, {session.get_inputs()[0].name: tensor[None]})
    exp = np.exp(logits[0] - logits[0].max())
    return exp / exp.sum()


@pytest.mark.parametrize("case", CASES)
def test_served_scores_are_the_models_own(case, photos, classifier, reference_model):
    data = photos[case]
    (served,) = classifier.classify([data], [1000])
    scores = np.zeros(1000)
    for prediction in served:
        scores[prediction["class_id"]] = prediction["score"]
    expected = reference_scores(reference_model, reference_input(data))
    assert np.abs(scores - expected).max() <= MAX_SCORE_DIFF
    assert served[0]["class_id"] == int(expected.argmax())


@pytest.mark.parametrize("case", CASES)
def test_served_model_input_is_the_contracts(case, photos, classifier):
    data = photos[case]
    served = preprocess(data, classifier.spec, classifier.max_pixels, classifier.fast_jpeg_decode)
    grey_levels = np.abs(served - reference_input(data)).max() * 128
    assert grey_levels <= MAX_GREY_LEVELS


def test_the_reference_tells_reduced_scale_decoding_apart(photos, classifier):
    # What the classifier did before: decode at 1/8 scale down to the resize's short side.
    data = photos["mosaic@2048px"]
    image = decode_rgb(data, classifier.max_pixels, draft_short_side=256)
    served = to_tensor(resize_and_crop(image, classifier.spec), classifier.spec)
    assert np.abs(served - reference_input(data)).max() * 128 > 8
