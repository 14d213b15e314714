"""The real committed model through ONNX Runtime, without Ray."""

import threading

import numpy as np
import pytest

from deployments.onnx_model import CPU, CUDA, OnnxClassifier, choose_providers
from rabbit_serve.messages import ErrorInfo
from rabbit_serve.preprocessing import preprocess
from rabbit_serve.settings import DEFAULT_MODEL_PATH
from tests.images import CAT_CLASSES, ESPRESSO, sample


@pytest.fixture(scope="module")
def model():
    classifier = OnnxClassifier(DEFAULT_MODEL_PATH, name="efficientnet-lite0")
    yield classifier
    classifier.close()


def test_known_photos_get_their_classes(model):
    cat, coffee = model.classify([sample("chelsea.jpg"), sample("coffee.jpg")], [5, 3])
    assert isinstance(cat, list) and isinstance(coffee, list)
    assert cat[0]["class_id"] in CAT_CLASSES
    assert coffee[0]["class_id"] == ESPRESSO and coffee[0]["label"] == "espresso"
    assert len(cat) == 5 and len(coffee) == 3
    assert [p["score"] for p in cat] == sorted((p["score"] for p in cat), reverse=True)


def test_batched_and_single_runs_agree(model):
    images = [sample("chelsea.jpg"), sample("coffee.jpg"), sample("chelsea.png")]
    batched = model.classify(images, [3, 3, 3])
    for image, expected in zip(images, batched, strict=True):
        (single,) = model.classify([image], [3])
        assert [p["class_id"] for p in single] == [p["class_id"] for p in expected]
        assert single[0]["score"] == pytest.approx(expected[0]["score"], abs=1e-4)


def test_a_bad_image_fails_alone_not_the_batch(model):
    truncated = sample("chelsea.jpg")[:4000]
    good, bad, junk = model.classify([sample("coffee.jpg"), truncated, b"junk"], [1, 1, 1])
    assert isinstance(good, list) and good[0]["class_id"] == ESPRESSO
    assert isinstance(bad, ErrorInfo) and bad.status == 422
    assert isinstance(junk, ErrorInfo) and junk.status == 422


def test_info_reports_provider_and_hash(model):
    info = model.info()
    assert info["provider"] == CPU
    assert len(info["sha256"]) == 64 and info["num_classes"] == 1000
    assert info["input_shape"][1:] == [3, 224, 224]
    assert info["spec"] == {
        "name": "efficientnet-lite0",
        "input_size": 224,
        "resize_short_side": 256,
        "crop": 224,
        "mean": [127.0, 127.0, 127.0],
        "std": [128.0, 128.0, 128.0],
        "layout": "NCHW",
        "color": "RGB",
        "num_classes": 1000,
        "labels": "imagenet-1k",
    }
    assert info["fast_jpeg_decode"] is False


def test_provider_choice():
    assert choose_providers(False, [CUDA, CPU]) == [CPU]
    assert choose_providers(True, [CUDA, CPU]) == [CUDA, CPU]
    # Asked for a GPU without the CUDA build: run on the CPU (and log why).
    assert choose_providers(True, [CPU]) == [CPU]


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="MODEL_PATH"):
        OnnxClassifier(tmp_path / "nope.onnx")


class _Recording:
    """A real session that notes each run under a name."""

    def __init__(self, session, log, name):
        self._session, self._log, self._name = session, log, name

    def run(self, *args):
        self._log.append(self._name)
        return self._session.run(*args)


def test_a_lone_batch_gets_the_lone_session_and_overlapping_ones_the_one_thread_session():
    classifier = OnnxClassifier(DEFAULT_MODEL_PATH, intra_op_threads=1, lone_batch_threads=2)
    try:
        assert classifier._lone_session is not None
        tensor = np.stack([preprocess(sample("coffee.jpg"), classifier.spec, 10**8)] * 2)
        one_thread = classifier.session.run(None, {classifier.input_name: tensor})[0]
        two_threads = classifier._lone_session.run(None, {classifier.input_name: tensor})[0]
        np.testing.assert_allclose(one_thread, two_threads, rtol=1e-4, atol=1e-4)

        log: list[str] = []
        classifier.session = _Recording(classifier.session, log, "one_thread")
        classifier._lone_session = _Recording(classifier._lone_session, log, "lone")
        classifier.run(tensor)
        assert log == ["one_thread"]  # the caller did not say it was alone
        log.clear()
        classifier.run(tensor, alone=True)
        assert log == ["lone"]
        log.clear()
        start = threading.Barrier(4)

        def overlapping() -> None:
            start.wait()
            for _ in range(3):
                classifier.run(tensor, alone=True)

        threads = [threading.Thread(target=overlapping) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(log) == 12 and "one_thread" in log
    finally:
        classifier.close()


@pytest.mark.parametrize("intra,lone", [(1, 0), (1, 1), (2, 2), (0, 2)])
def test_no_lone_session_when_it_would_not_add_threads(intra, lone):
    classifier = OnnxClassifier(DEFAULT_MODEL_PATH, intra_op_threads=intra, lone_batch_threads=lone)
    try:
        expected = 0 < intra < lone
        assert (classifier._lone_session is not None) == expected
    finally:
        classifier.close()
