"""A second, generated model (160 x 160, per-channel mean/std, 10 labels in a file) is
served through its spec alone, and the classifier refuses a spec that does not fit."""

import json

import numpy as np
import pytest
from PIL import Image

from deployments.onnx_model import OnnxClassifier
from tests import generated_model as tiny
from tests.images import encode

IMAGES = [
    Image.new("RGB", (300, 200), (200, 80, 80)),
    tiny.framed((500, 500), (200, 60, 60), (60, 160, 60)),
    tiny.framed((640, 480), (60, 60, 200), (128, 128, 128)),
    tiny.framed((1200, 900), (60, 60, 200), (200, 60, 60)),
]
# One-pass resampling of the crop region: rounding only.
MAX_SCORE_DIFF = 1e-3


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny.write_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def classifier(model_path):
    model = OnnxClassifier(model_path, name=tiny.NAME)
    yield model
    model.close()


def scores_of(predictions: list) -> np.ndarray:
    scores = np.zeros(len(tiny.LABELS))
    for prediction in predictions:
        scores[prediction["class_id"]] = prediction["score"]
    return scores


def test_it_answers_what_numpy_computes_from_its_spec(classifier):
    outcomes = classifier.classify([encode(image, "PNG") for image in IMAGES], [10] * len(IMAGES))
    for image, predictions in zip(IMAGES, outcomes, strict=True):
        expected = tiny.expected_scores(image)
        assert np.abs(scores_of(predictions) - expected).max() <= MAX_SCORE_DIFF
        assert predictions[0]["label"] == tiny.LABELS[int(expected.argmax())]
    assert [p[0]["label"] for p in outcomes] == ["red", "red", "blue", "blue"]


@pytest.mark.parametrize(
    "other", [{"mean": (127,) * 3, "std": (128,) * 3}, {"resize_short_side": 256, "crop": 224}]
)
def test_the_expectation_would_catch_the_first_models_contract(other):
    # If the classifier ignored the spec and used EfficientNet-Lite0's normalisation or
    # resize and crop, the test above would fail by far more than its bound.
    for image in IMAGES[1:]:
        wrong = tiny.expected_scores(image, **other)
        assert np.abs(wrong - tiny.expected_scores(image)).max() > 50 * MAX_SCORE_DIFF


def test_a_jpeg_and_a_batch_answer_as_singles(classifier):
    images = [encode(image, "JPEG", quality=95) for image in IMAGES]
    batched = classifier.classify(images, [3] * len(images))
    for data, expected in zip(images, batched, strict=True):
        (single,) = classifier.classify([data], [3])
        assert [p["class_id"] for p in single] == [p["class_id"] for p in expected]
        assert single[0]["score"] == pytest.approx(expected[0]["score"], abs=1e-5)


def test_info_reports_its_spec(classifier, model_path):
    info = classifier.info()
    assert info["name"] == tiny.NAME and info["path"] == str(model_path)
    assert info["input_name"] == "pixels" and info["input_shape"] == ["batch", 3, 160, 160]
    assert info["num_classes"] == 10
    assert info["spec"] == {**tiny.SPEC, "mean": list(tiny.MEAN), "std": list(tiny.STD)}


def test_a_graph_with_named_spatial_axes_takes_the_spec_size(tmp_path):
    path = tiny.write_model(tmp_path, spatial=("height", "width"))
    model = OnnxClassifier(path)
    try:
        image = IMAGES[2]
        (predictions,) = model.classify([encode(image, "PNG")], [10])
        expected = tiny.expected_scores(image)
        assert np.abs(scores_of(predictions) - expected).max() <= MAX_SCORE_DIFF
    finally:
        model.close()


def rewrite_spec(path, **changes) -> None:
    spec = path.with_suffix(".json")
    spec.write_text(json.dumps({**json.loads(spec.read_text()), **changes}))


def test_a_spec_whose_input_size_the_graph_does_not_take_is_refused(tmp_path):
    path = tiny.write_model(tmp_path)
    rewrite_spec(path, input_size=224, crop=224, resize_short_side=256)
    with pytest.raises(ValueError, match=r"takes input \['batch', 3, 160, 160\].*tiny_colours"):
        OnnxClassifier(path)


def test_a_spec_with_another_class_count_is_refused(tmp_path):
    path = tiny.write_model(tmp_path)
    (tmp_path / "labels.txt").write_text("\n".join(f"c{i}" for i in range(12)))
    rewrite_spec(path, num_classes=12)
    with pytest.raises(ValueError, match=r"output \['batch', 10\]; its spec says \[N, 12\]"):
        OnnxClassifier(path)


def test_a_labels_file_one_short_is_refused(tmp_path):
    path = tiny.write_model(tmp_path)
    (tmp_path / "labels.txt").write_text("\n".join(tiny.LABELS[:9]) + "\n")
    with pytest.raises(ValueError, match="9 names; the model has 10"):
        OnnxClassifier(path)


def test_a_model_without_its_spec_is_refused_naming_the_file(tmp_path):
    path = tiny.write_model(tmp_path)
    path.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match=r"tiny_colours\.json"):
        OnnxClassifier(path)
