"""A model scored on one site's test rows with the job's ``[evaluate]`` options, or under DP.

``[evaluate]`` keys (all optional)::

    cost = { fp = 1, fn = 5 }          # mean cost per row at the cost-optimal threshold
    card_precision = { k = 100, card = "customer_id", day = "tx_time_days" }

``card_precision`` adds ``card_precision_top_k``: per day, the share of truly compromised cards
among the ``k`` cards the model finds most suspicious (``fedcore.metrics.card_precision_top_k``).
It needs the card and day columns in the site's data; tag them ``identifier`` in the site file so
they are not model inputs.

``evaluate_dp`` is what a site releases when its policy says evaluations under DP are noised: the
Gaussian mechanism on (correct predictions, per-row loss clipped to ``EVAL_LOSS_CLIP`` / the clip,
row count), each changing by at most 1 when one test row is added or removed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from torch import nn

from fedcore import metrics
from fedcore.clients.trainer import evaluate_scores, predict_scores
from fedcore.config.job import CardPrecision, EvaluateSpec
from fedcore.data import SiteData
from fedcore.errors import ConfigError, PolicyError
from fedcore.privacy.rng import Source
from fedcore.tasks import BINARY, Task
from fedcore.tasks.classification import LOSS_CLIP

__all__ = ["EVAL_LOSS_CLIP", "evaluate_dp", "evaluate_site"]

EVAL_LOSS_CLIP = LOSS_CLIP
"""Per-row loss is clipped here before a DP evaluation sums it (its sensitivity)."""


def evaluate_site(
    model: nn.Module, data: SiteData, options: EvaluateSpec | None = None, task: Task = BINARY
) -> dict[str, float]:
    """The task's metrics of ``model`` on ``data``'s test rows (binary: accuracy, balanced accuracy,
    loss, AUC, AUPRC), plus what ``options`` asks."""
    opts = options or EvaluateSpec()
    p = predict_scores(model, data.x_test, task)
    out = evaluate_scores(p, data.y_test, cost=opts.cost, task=task)
    if opts.card_precision is not None:
        out["card_precision_top_k"] = _card_precision(data, p, opts.card_precision)
    return out


def evaluate_dp(
    model: nn.Module, data: SiteData, *, noise_std: float, source: Source, task: Task = BINARY
) -> dict[str, float]:
    """Noisy accuracy and clipped mean loss (see the module docstring); ``noise_std`` per count."""
    p, y = predict_scores(model, data.x_test, task), data.y_test
    rows = task.dp_rows(p, y)
    if rows is None:  # the plan refuses evaluation = "dp" for such a task: never reached by a site
        raise PolicyError(f"the {task.name!r} task has no DP evaluation; its sites withhold evaluations")
    correct, loss = rows
    exact = np.array([float(np.sum(correct)), float(np.sum(loss)), float(len(y))])
    correct_n, loss_n, count = exact + source.normal_array(3, std=noise_std)
    n = max(count, 1.0)
    return {
        "accuracy": float(np.clip(correct_n / n, 0.0, 1.0)),
        "loss": float(np.clip(loss_n * EVAL_LOSS_CLIP / n, 0.0, EVAL_LOSS_CLIP)),
        "dp_noise_std": noise_std,
    }


def _card_precision(data: SiteData, p: np.ndarray, opts: CardPrecision) -> float:
    missing = [c for c in (opts.card, opts.day) if c not in data.test_frame.columns]
    if missing:
        raise ConfigError(
            f"site {data.site!r}: the job's [evaluate] card_precision needs column(s) {missing}, "
            f'which this site\'s data lacks; add them to [schema.columns] with tag = "identifier" '
            "or set card/day to the site's card and day columns"
        )
    frame = pd.DataFrame(
        {
            "customer_id": data.test_frame[opts.card].to_numpy(),
            "tx_time_days": data.test_frame[opts.day].to_numpy(),
            "fraud": (data.y_test >= 0.5).astype(np.int64),
        }
    )
    return metrics.card_precision_top_k(frame, p, k=opts.k)
