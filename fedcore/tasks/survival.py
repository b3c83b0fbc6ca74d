"""``survival``: time to event with censoring, a proportional-hazards model, Harrell's C-index.

Labels: ``[schema] label`` is the time column (>= 0) and ``[schema] event`` the event column (1: the
event was observed at that time; 0: censored then), stored as rows ``(time, event)``. The model's
one output is the log relative hazard (risk score) ``eta``: patient ``i``'s hazard is
``h_0(t) exp(eta_i)``. Either likelihood below ranks patients by ``eta`` alone, so the C-index of
the two is the same statistic of the same kind of model.

The job's ``[task] likelihood`` chooses the loss:

- ``"cox"`` (the default): the negative Cox partial log-likelihood of the batch (Cox 1972) with
  Breslow's handling of tied times (Breslow 1974): every row still at risk at an event's time is
  in its risk set, ties included,

      L = (1 / n) sum_{i: event} [ log sum_{j: T_j >= T_i} exp(eta_j) - eta_i ],

  divided by the batch size ``n`` as FLamby's Fed-TCGA-BRCA loss is (so its learning rates carry
  over). The risk sets are the batch's rows: a minibatch estimate, as in FLamby. The baseline
  hazard ``h_0`` is left unspecified.

- ``"weibull"``: a parametric proportional-hazards model, ``h_0(t) = k t^(k-1)`` with the shape
  ``k`` a public constant of the job (``shape``, default 1: the exponential model; Klein and
  Moeschberger, "Survival Analysis", 2nd ed., Sec. 12.2). With ``t`` the time divided by the
  public ``time_scale`` (default 1; days / 365.25 gives years, so ``exp`` stays moderate) and
  ``e`` the event indicator, patient ``i``'s negative log-likelihood is

      l_i = t_i^k exp(eta_i) - e_i (eta_i + (k - 1) log t_i + log k),

  the mean over the batch is the loss, and the model's bias plays the baseline scale (a Weibull
  scale ``lambda`` is ``eta``'s offset ``-k log lambda``). An event at time 0 has no finite
  likelihood unless ``k = 1`` (the term ``(k - 1) log t`` carries no gradient: ``k = 1`` drops it).

DP-SGD clips each example's gradient (``per_example``), which bounds one record's influence only
when the loss is a sum of terms each of which depends on that record alone. The Weibull loss is
(``l_i`` reads patient ``i``'s row only): DP-SGD is admitted. The Cox loss is not: each event's
term sums over its whole risk set, so one patient's record moves the terms of every patient who
left the study before them; clipping per-example gradients then bounds nothing, and both the job
check and a site's plan refuse DP-SGD for it, naming ``likelihood = "weibull"``. (Clipping the
whole batch's gradient to ``C`` would bound one patient's influence by ``2 C``, twice DP-SGD's
sensitivity: that variant is not implemented.) A DP evaluation has no bounded per-row statistic
for either (the C-index is a ratio of pair counts; ``l_i`` is unbounded), so under DP a site
withholds its evaluations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, get_args

import numpy as np
from numpy.typing import NDArray

from fedcore import metrics
from fedcore.errors import PrivacyError, SchemaError
from fedcore.tasks.base import F32, F64, LabelSpec, target_refusal

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from fedcore.config.site import SiteConfig

__all__ = ["Likelihood", "Survival", "cox_loss", "weibull_losses"]

Likelihood = Literal["cox", "weibull"]


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


def weibull_losses(
    risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor, *, shape: float
) -> torch.Tensor:
    """Per row, the Weibull proportional-hazards negative log-likelihood ``l_i`` above (``time``
    already divided by the time scale); a censored row at time 0 scores 0."""
    import torch

    out = time.pow(shape) * torch.exp(risk) - event * (risk + math.log(shape))
    if shape != 1.0:  # (k - 1) log t: absent for the exponential (an event at time 0 stays finite)
        out = out - (shape - 1.0) * torch.xlogy(event, time)
    return out


@dataclass(frozen=True)
class Survival:
    """A proportional-hazards model (one output: the log relative hazard), by the Cox partial
    likelihood or, with ``likelihood = "weibull"``, the Weibull likelihood of shape ``shape`` on
    times divided by ``time_scale`` (both Weibull-only options)."""

    likelihood: Likelihood = "cox"
    shape: float | None = None
    time_scale: float | None = None
    name: ClassVar[str] = "survival"
    dp_evaluation: ClassVar[bool] = False
    headline: ClassVar[str] = "c_index"

    def __post_init__(self) -> None:
        """Strict options, every problem at once: the allowed likelihoods, numbers > 0, no Weibull
        option on the Cox loss."""
        problems = []
        if self.likelihood not in get_args(Likelihood):
            allowed = ", ".join(map(repr, get_args(Likelihood)))
            problems.append(f"likelihood must be one of {allowed}, got {self.likelihood!r}")
        for key in ("shape", "time_scale"):
            value = getattr(self, key)
            if value is None:
                continue
            if self.likelihood == "cox":
                problems.append(f'{key} is the Weibull likelihood\'s; set likelihood = "weibull" or drop it')
            elif isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                problems.append(f"{key} must be a number > 0, got {value!r}")
            else:
                object.__setattr__(self, key, float(value))
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def per_example(self) -> bool:
        """Whether the loss is a sum over patients, each term reading one row (DP-SGD's premise)."""
        return self.likelihood == "weibull"

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
        if self.likelihood == "weibull":
            return self.example_losses(outputs, y).mean()
        return cox_loss(outputs.squeeze(-1), y[:, 0], y[:, 1])

    def example_losses(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.likelihood != "weibull":
            raise PrivacyError(
                "the Cox partial likelihood is not a sum over patients (each risk set holds many), so "
                "DP-SGD's per-example clipping would not bound one patient's influence; train it without "
                'DP-SGD, or set [task] likelihood = "weibull" (one term per patient)'
            )
        time = y[:, 0] / (self.time_scale or 1.0)
        return weibull_losses(outputs.squeeze(-1), time, y[:, 1], shape=self.shape or 1.0)

    def predict(self, outputs: torch.Tensor) -> F64:
        out: F64 = outputs.squeeze(-1).double().numpy()
        return out

    def row_losses(self, scores: F64, y: F32) -> F64 | None:
        """The Weibull loss per row; ``None`` for the Cox loss (a row's term reads its risk set)."""
        if self.likelihood != "weibull":
            return None
        import torch

        out: F64 = self.example_losses(torch.from_numpy(scores), torch.from_numpy(y).double()).numpy()
        return out

    def metrics(self, scores: F64, y: F32) -> dict[str, float]:
        import torch

        loss = self.loss(torch.from_numpy(scores).unsqueeze(-1), torch.from_numpy(y).double())
        out = {"loss": float(loss), "n": float(len(y))}
        c_index = metrics.concordance_index(y[:, 0], scores, y[:, 1])
        if np.isfinite(c_index):
            out["c_index"] = c_index
        return out

    def reference(self, y_train: F32, y_test: F32) -> dict[str, float]:
        return {}  # a constant risk scores C-index 0.5 by definition

    def dp_rows(self, scores: F64, y: F32) -> tuple[F64, F64] | None:
        return None
