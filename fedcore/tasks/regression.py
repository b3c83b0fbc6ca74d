"""``regression``: a numeric label, one output, mean squared error; metrics MSE (``loss``), MAE, R2.

The reference is the training rows' mean predicted everywhere (its MAE and R2 on the test rows). A
DP evaluation needs a bounded per-row statistic, which an unbounded label has not: under DP a site
withholds a regression job's evaluations (its plan refuses ``evaluation = "dp"``).
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

__all__ = ["Regression"]


@dataclass(frozen=True)
class Regression:
    """Least squares on a numeric label (``[schema] label``, type numeric)."""

    name: ClassVar[str] = "regression"
    per_example: ClassVar[bool] = True
    dp_evaluation: ClassVar[bool] = False
    headline: ClassVar[str] = "r2"

    @classmethod
    def read_labels(cls, frame: pd.DataFrame, site: SiteConfig) -> F32:
        y = frame[site.label].to_numpy(np.float64)
        if not np.all(np.isfinite(y)):
            raise SchemaError(f"{site.data_path}: label {site.label!r} must be numeric for a regression")
        out: F32 = y.astype(np.float32)
        return out

    @classmethod
    def stratify(cls, y: F32) -> NDArray[np.int64] | None:
        return None

    def output_dim(self) -> int:
        return 1

    def refusal(self, labels: LabelSpec) -> str | None:
        return target_refusal(self, labels)

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from torch.nn import functional as F

        return F.mse_loss(outputs.squeeze(-1), y)

    def example_losses(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from torch.nn import functional as F

        return F.mse_loss(outputs.squeeze(-1), y, reduction="none")

    def predict(self, outputs: torch.Tensor) -> F64:
        out: F64 = outputs.squeeze(-1).double().numpy()
        return out

    def row_losses(self, scores: F64, y: F32) -> F64 | None:
        out: F64 = (scores - y) ** 2
        return out

    def metrics(self, scores: F64, y: F32) -> dict[str, float]:
        out = {
            "loss": float(np.mean((scores - y) ** 2)),
            "mae": metrics.mean_absolute_error(y, scores),
            "n": float(len(y)),
        }
        r2 = metrics.r2_score(y, scores)
        if np.isfinite(r2):
            out["r2"] = r2
        return out

    def reference(self, y_train: F32, y_test: F32) -> dict[str, float]:
        mean = np.full(len(y_test), float(np.mean(y_train)))
        out = {"mean_predictor_mae": metrics.mean_absolute_error(y_test, mean)}
        r2 = metrics.r2_score(y_test, mean)
        if np.isfinite(r2):
            out["mean_predictor_r2"] = r2
        return out

    def dp_rows(self, scores: F64, y: F32) -> tuple[F64, F64] | None:
        return None
