"""Classification tasks: ``binary`` (one logit, BCE; fedcore's default) and ``multiclass`` (softmax).

``binary`` labels come from the site's rule (``[schema] positive`` values, or ``positive_above``, or
``> 0``); its metrics are accuracy at 0.5, balanced accuracy, BCE loss and, when both classes occur,
ROC AUC and AUPRC; the reference is each site's majority training class. ``multiclass`` labels are a
categorical column's declared levels (class ``k`` is the ``k``-th level, so every site numbers the
classes alike); its metrics are accuracy, balanced accuracy, macro one-vs-rest AUC and cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from numpy.typing import NDArray

from fedcore import metrics
from fedcore.errors import SchemaError
from fedcore.tasks.base import F32, F64, LabelSpec, target_refusal

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from fedcore.config.site import SiteConfig

__all__ = ["Binary", "MultiClass", "bce"]

_EPS = 1e-12
LOSS_CLIP = 5.0
"""A DP evaluation clips each row's loss here (its sensitivity), then divides by it."""


def bce(p: F64, y: F32) -> F64:
    """Per-example binary cross-entropy of probabilities ``p`` for 0/1 labels ``y``."""
    out: F64 = -(y * np.log(p + _EPS) + (1 - y) * np.log(1 - p + _EPS)).astype(np.float64)
    return out


def _one_class(y: NDArray[np.generic], frame_rows: int, site: SiteConfig) -> None:
    classes = set(np.unique(y).tolist())
    if len(classes) < 2:
        raise SchemaError(
            f"{site.data_path}: label {site.label!r} has one class only ({classes}) after cleaning "
            f"{frame_rows} rows; a classifier needs at least two. Check [schema] positive/positive_above "
            "and the data"
        )


@dataclass(frozen=True)
class Binary:
    """0/1 labels, one logit, binary cross-entropy (``pos_weight`` weighs the positive class)."""

    pos_weight: float | None = None
    name: ClassVar[str] = "binary"
    per_example: ClassVar[bool] = True
    dp_evaluation: ClassVar[bool] = True
    headline: ClassVar[str] = "accuracy"

    @classmethod
    def read_labels(cls, frame: pd.DataFrame, site: SiteConfig) -> F32:
        raw = frame[site.label]
        if site.positive_above is not None:
            y = raw.astype(float) > float(site.positive_above)
        elif site.positive:
            y = raw.isin(site.positive)
        else:
            y = raw.astype(float) > 0
        out: F32 = y.to_numpy().astype(np.float32)
        _one_class(out, len(frame), site)
        return out

    @classmethod
    def stratify(cls, y: F32) -> NDArray[np.int64] | None:
        return y.astype(np.int64)

    def output_dim(self) -> int:
        return 1

    def refusal(self, labels: LabelSpec) -> str | None:
        return target_refusal(self, labels)

    def _weight(self) -> torch.Tensor | None:
        import torch

        return None if self.pos_weight is None else torch.tensor([self.pos_weight])

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from torch.nn import functional as F

        return F.binary_cross_entropy_with_logits(outputs.squeeze(-1), y, pos_weight=self._weight())

    def example_losses(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from torch.nn import functional as F

        return F.binary_cross_entropy_with_logits(
            outputs.squeeze(-1), y, pos_weight=self._weight(), reduction="none"
        )

    def predict(self, outputs: torch.Tensor) -> F64:
        import torch

        out: F64 = torch.sigmoid(outputs.squeeze(-1)).double().numpy()
        return out

    def metrics(self, scores: F64, y: F32) -> dict[str, float]:
        pred, truth = scores >= 0.5, y >= 0.5
        out = {
            "accuracy": float(np.mean(pred == truth)),
            "balanced_accuracy": metrics.balanced_accuracy(truth, pred),
            "loss": float(np.mean(bce(scores, y))),
            "n": float(len(y)),
        }
        if 0 < y.sum() < len(y):
            out["auc"] = metrics.roc_auc(y, scores)
            out["auprc"] = metrics.average_precision(y, scores)
        return out

    def row_losses(self, scores: F64, y: F32) -> F64 | None:
        return bce(scores, y)

    def reference(self, y_train: F32, y_test: F32) -> dict[str, float]:
        """Always the training majority class (positive on a tie), on the test rows."""
        predict = bool(np.mean(y_train >= 0.5) >= 0.5)
        return {"majority_class_accuracy": float(np.mean((y_test >= 0.5) == predict))}

    def dp_rows(self, scores: F64, y: F32) -> tuple[F64, F64] | None:
        correct = ((scores >= 0.5) == (y >= 0.5)).astype(np.float64)
        return correct, np.minimum(bce(scores, y), LOSS_CLIP) / LOSS_CLIP


@dataclass(frozen=True)
class MultiClass:
    """``classes`` classes (the site's declared label levels), softmax cross-entropy."""

    classes: int
    name: ClassVar[str] = "multiclass"
    per_example: ClassVar[bool] = True
    dp_evaluation: ClassVar[bool] = True
    headline: ClassVar[str] = "accuracy"

    def __post_init__(self) -> None:
        if isinstance(self.classes, bool) or not isinstance(self.classes, int) or self.classes < 2:
            raise ValueError(f"classes must be an integer >= 2, got {self.classes!r}")

    @classmethod
    def read_labels(cls, frame: pd.DataFrame, site: SiteConfig) -> F32:
        column = next(c for c in site.columns if c.name == site.label)
        levels = [lv if isinstance(lv, str) else float(lv) for lv in column.levels]
        raw = frame[site.label]
        unknown = sorted(map(str, set(raw.dropna()) - set(levels)))
        if unknown:
            raise SchemaError(
                f"{site.data_path}: label {site.label!r} has values {unknown} outside its declared levels "
                f"{list(column.levels)}; add them to levels in {site.path}"
            )
        codes = np.array([levels.index(v) for v in raw], dtype=np.float32)
        _one_class(codes, len(frame), site)
        return codes

    @classmethod
    def stratify(cls, y: F32) -> NDArray[np.int64] | None:
        return y.astype(np.int64)

    def output_dim(self) -> int:
        return self.classes

    def refusal(self, labels: LabelSpec) -> str | None:
        if labels.target == self.name and labels.classes != self.classes:
            return (
                f"the job's task has {self.classes} classes but this site's label {labels.label!r} "
                f"declares {labels.classes} levels"
            )
        return target_refusal(self, labels)

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from torch.nn import functional as F

        return F.cross_entropy(outputs, y.long())

    def example_losses(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from torch.nn import functional as F

        return F.cross_entropy(outputs, y.long(), reduction="none")

    def predict(self, outputs: torch.Tensor) -> F64:
        import torch

        out: F64 = torch.softmax(outputs, dim=-1).double().numpy()
        return out

    def row_losses(self, scores: F64, y: F32) -> F64 | None:
        return self._row_losses(scores, y)

    @staticmethod
    def _row_losses(scores: F64, y: F32) -> F64:
        out: F64 = -np.log(scores[np.arange(len(y)), y.astype(np.int64)] + _EPS)
        return out

    def metrics(self, scores: F64, y: F32) -> dict[str, float]:
        truth, pred = y.astype(np.int64), np.argmax(scores, axis=1)
        out = {
            "accuracy": float(np.mean(pred == truth)),
            "balanced_accuracy": metrics.balanced_accuracy(truth, pred),
            "loss": float(np.mean(self._row_losses(scores, y))),
            "n": float(len(y)),
        }
        auc = metrics.macro_auc(truth, scores)
        if np.isfinite(auc):
            out["macro_auc"] = auc
        return out

    def reference(self, y_train: F32, y_test: F32) -> dict[str, float]:
        majority = int(np.argmax(np.bincount(y_train.astype(np.int64), minlength=self.classes)))
        return {"majority_class_accuracy": float(np.mean(y_test.astype(np.int64) == majority))}

    def dp_rows(self, scores: F64, y: F32) -> tuple[F64, F64] | None:
        correct = (np.argmax(scores, axis=1) == y.astype(np.int64)).astype(np.float64)
        return correct, np.minimum(self._row_losses(scores, y), LOSS_CLIP) / LOSS_CLIP
