"""Label flipping, a data-poisoning attack (simulation only): the site trains on wrong labels and
then sends an honestly computed update of that training (Tolpegin et al. 2020, "Data Poisoning
Attacks Against Federated Learning Systems", ESORICS; byzfl's LabelFlipping: ``y -> K - 1 - y``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from fedcore.errors import ConfigError

__all__ = ["LabelFlip", "flip_labels"]


def flip_labels(y: NDArray[Any], *, num_classes: int | None = None) -> NDArray[Any]:
    """``K - 1 - y`` for class indices ``0 .. K-1`` (binary: ``1 - y``); a new array, same dtype.

    ``num_classes=None`` means binary: labels must be 0 or 1 (ints, bools or floats). Multi-class
    labels need ``num_classes``: one site's data may lack the top class, so ``K`` is not inferred.
    """
    arr = np.asarray(y)
    k = 2 if num_classes is None else num_classes
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if arr.size and not (np.all(np.equal(np.mod(arr, 1), 0)) and arr.min() >= 0 and arr.max() <= k - 1):
        bad = arr[(np.mod(arr, 1) != 0) | (arr < 0) | (arr > k - 1)].ravel()[0].item()
        fix = "pass num_classes for multi-class labels" if num_classes is None else "check the label column"
        raise ConfigError(f"labels must be class indices in 0..{k - 1}, found {bad!r}: {fix}")
    if arr.dtype == np.bool_:
        return ~arr
    return (k - 1 - arr).astype(arr.dtype)


@dataclass(frozen=True)
class LabelFlip:
    """A ``DataAttack``: flip a ``fraction`` of the labels (rows drawn by ``rng``) by ``flip_labels``."""

    num_classes: int | None = None
    fraction: float = 1.0
    needs_honest: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not (isinstance(self.fraction, int | float) and 0 < self.fraction <= 1):
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction!r}")

    def corrupt_labels(self, y: NDArray[Any], *, rng: np.random.Generator) -> NDArray[Any]:
        """Labels with ``round(fraction n)`` rows (along axis 0, drawn by ``rng``) flipped."""
        arr = np.asarray(y)
        flipped = flip_labels(arr, num_classes=self.num_classes)
        if self.fraction == 1 or arr.ndim == 0:
            return flipped
        out = arr.copy()
        rows = rng.choice(arr.shape[0], size=round(self.fraction * arr.shape[0]), replace=False)
        out[rows] = flipped[rows]
        return out
