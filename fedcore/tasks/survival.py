"""``survival``: time to event with censoring, a Cox proportional-hazards model, Harrell's C-index.

Labels: ``[schema] label`` is the time column (> 0) and ``[schema] event`` the event column (1: the
event was observed at that time; 0: censored then), stored as rows ``(time, event)``. The model's
one output is the log relative hazard (risk score) ``eta``.

Loss: the negative Cox partial log-likelihood of the batch (Cox 1972) with Breslow's handling of
tied times (Breslow 1974): every row still at risk at an event's time is in its risk set, ties
included,

    L = (1 / n) sum_{i: event} [ log sum_{j: T_j >= T_i} exp(eta_j) - eta_i ],

divided by the batch size ``n`` as FLamby's Fed-TCGA-BRCA loss is (so its learning rates carry
over). The risk sets are the batch's rows: a minibatch estimate, as in FLamby.

DP-SGD does not apply (``per_example = False``): each event's term sums over its whole risk set, so
one patient's record moves the terms of every patient who left the study before them. Clipping
per-example gradients then bounds nothing, and a site's plan refuses DP-SGD for this task. (Clipping
the whole batch's gradient to ``C`` would bound one patient's influence by ``2 C``, twice DP-SGD's
sensitivity: that variant is not implemented.) A DP evaluation has no bounded per-row statistic
either (the C-index is a ratio of pair counts), so under DP a site withholds its evaluations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from numpy.typing import NDArray

from fedcore import metrics
from fedcore.errors import PrivacyError, SchemaError
from fedcore.tasks.base import F32, F64, LabelSpec, target_refusal

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from fedcore.config.site import SiteConfig

__all__ = ["Survival", "cox_loss"]


def cox_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """The Breslow negative partial log-likelihood above (a scalar; 0 for a batch without events)."""
    import torch

    n = risk.shape[0]
    order = torch.argsort(time, descending=True, stable=True)
    r, t, e = risk[order], time[order], event[order]
    running = torch.logcumsumexp(r, dim=0)  # log sum of exp(eta) over the rows with time >= this one's
    _, group, counts = torch.unique_consecutive(t, return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, dim=0) - 1  # the last row of each group of tied times
    return ((running[last[group]] - r) * e).sum() / max(n, 1)


@dataclass(frozen=True)
class Survival:
    """Cox regression (one output: the log relative hazard)."""

    name: ClassVar[str] = "survival"
    per_example: ClassVar[bool] = False
    dp_evaluation: ClassVar[bool] = False
    headline: ClassVar[str] = "c_index"

    @classmethod
    def read_labels(cls, frame: pd.DataFrame, site: SiteConfig) -> F32:
        if site.event is None:
            raise SchemaError(
                f"{site.path}: [schema] target = 'survival' needs [schema] event (the event column)"
            )
        time = frame[site.label].to_numpy(np.float64)
        event = frame[site.event].to_numpy(np.float64)
        if not np.all(np.isfinite(time) & (time >= 0)):
            raise SchemaError(f"{site.data_path}: time column {site.label!r} must hold numbers >= 0")
        if not np.all(np.isin(event, (0.0, 1.0))):
            raise SchemaError(f"{site.data_path}: event column {site.event!r} must hold 0 (censored) or 1")
        if not event.any():
            raise SchemaError(f"{site.data_path}: no row has an event ({site.event!r} = 1); nothing to learn")
        return np.stack([time, event], axis=1).astype(np.float32)

    @classmethod
    def stratify(cls, y: F32) -> NDArray[np.int64] | None:
        return y[:, 1].astype(np.int64)  # keep the share of observed events in both parts

    def output_dim(self) -> int:
        return 1

    def refusal(self, labels: LabelSpec) -> str | None:
        return target_refusal(self, labels)

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cox_loss(outputs.squeeze(-1), y[:, 0], y[:, 1])

    def example_losses(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise PrivacyError(
            "the Cox partial likelihood is not a sum over patients (each risk set holds many), so "
            "DP-SGD's per-example clipping would not bound one patient's influence; train survival "
            "models without DP-SGD"
        )

    def predict(self, outputs: torch.Tensor) -> F64:
        out: F64 = outputs.squeeze(-1).double().numpy()
        return out

    def row_losses(self, scores: F64, y: F32) -> F64 | None:
        return None

    def metrics(self, scores: F64, y: F32) -> dict[str, float]:
        import torch

        loss = cox_loss(
            torch.from_numpy(scores), torch.from_numpy(y[:, 0]).double(), torch.from_numpy(y[:, 1]).double()
        )
        out = {"loss": float(loss), "n": float(len(y))}
        c_index = metrics.concordance_index(y[:, 0], scores, y[:, 1])
        if np.isfinite(c_index):
            out["c_index"] = c_index
        return out

    def reference(self, y_train: F32, y_test: F32) -> dict[str, float]:
        return {}  # a constant risk scores C-index 0.5 by definition

    def dp_rows(self, scores: F64, y: F32) -> tuple[F64, F64] | None:
        return None
