"""Model logits to ranked, labelled predictions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rabbit_serve.messages import Prediction


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_k(probabilities: np.ndarray, k: int, labels: Sequence[str]) -> list[Prediction]:
    """The ``k`` most probable classes of one row, highest score first."""
    k = max(1, min(k, probabilities.shape[-1]))
    # argpartition is O(n); only the k winners get sorted.
    idx = np.argpartition(-probabilities, k - 1)[:k]
    idx = idx[np.argsort(-probabilities[idx], kind="stable")]
    return [
        Prediction(
            class_id=int(i),
            label=labels[i] if i < len(labels) else str(int(i)),
            score=float(probabilities[i]),
        )
        for i in idx
    ]
