import numpy as np
import pytest

from rabbit_serve.labels import imagenet_labels
from rabbit_serve.postprocessing import softmax, top_k


def test_softmax_rows_sum_to_one_and_survive_large_logits():
    logits = np.array([[1000.0, 1000.0, -1000.0], [0.0, 1.0, 2.0]], dtype=np.float32)
    probs = softmax(logits)
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert probs[0, 0] == pytest.approx(0.5)
    assert np.all(np.isfinite(probs))


def test_top_k_is_sorted_and_labelled():
    probs = np.array([0.1, 0.5, 0.05, 0.3, 0.05])
    labels = ["a", "b", "c", "d", "e"]
    out = top_k(probs, 3, labels)
    assert [p["class_id"] for p in out] == [1, 3, 0]
    assert [p["label"] for p in out] == ["b", "d", "a"]
    assert out[0]["score"] == pytest.approx(0.5)
    assert all(isinstance(p["class_id"], int) and isinstance(p["score"], float) for p in out)


@pytest.mark.parametrize("k,expected", [(0, 1), (1, 1), (5, 5), (50, 5)])
def test_k_is_clamped_to_the_number_of_classes(k, expected):
    assert len(top_k(np.linspace(0, 1, 5), k, list("abcde"))) == expected


def test_top_k_matches_a_full_sort():
    rng = np.random.default_rng(0)
    probs = softmax(rng.normal(size=1000))
    out = top_k(probs, 10, imagenet_labels())
    assert [p["class_id"] for p in out] == list(np.argsort(-probs)[:10])


def test_imagenet_labels_are_the_1000_classes():
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert labels[967] == "espresso"
    assert "cat" in labels[281]
