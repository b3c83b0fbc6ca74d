"""A model scored on one site's test rows with the job's ``[evaluate]`` options.

``[evaluate]`` keys (all optional)::

    cost = { fp = 1, fn = 5 }          # mean cost per row at the cost-optimal threshold
    card_precision = { k = 100, card = "customer_id", day = "tx_time_days" }

``card_precision`` adds ``card_precision_top_k``: per day, the share of truly compromised cards
among the ``k`` cards the model finds most suspicious (``fedcore.metrics.card_precision_top_k``).
It needs the card and day columns in the site's data; tag them ``identifier`` in the site file so
they are not model inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from fedcore import metrics
from fedcore.clients.trainer import evaluate_scores, predict_scores
from fedcore.config import card_precision_options
from fedcore.data import SiteData
from fedcore.errors import ConfigError

__all__ = ["evaluate_site"]


def evaluate_site(
    model: nn.Module, data: SiteData, options: Mapping[str, Any] | None = None
) -> dict[str, float]:
    """Accuracy, loss, AUC, AUPRC of ``model`` on ``data``'s test rows, plus what ``options`` asks."""
    opts = dict(options or {})
    p = predict_scores(model, data.x_test)
    out = evaluate_scores(p, data.y_test, cost=opts.get("cost"))
    if opts.get("card_precision"):
        cp = card_precision_options(opts["card_precision"], "job")
        out["card_precision_top_k"] = _card_precision(data, p, cp)
    return out


def _card_precision(data: SiteData, p: np.ndarray, opts: Mapping[str, Any]) -> float:
    missing = [opts[k] for k in ("card", "day") if opts[k] not in data.test_frame.columns]
    if missing:
        raise ConfigError(
            f"site {data.site!r}: the job's [evaluate] card_precision needs column(s) {missing}, "
            f'which this site\'s data lacks; add them to [schema.columns] with tag = "identifier" '
            "or set card/day to the site's card and day columns"
        )
    frame = pd.DataFrame(
        {
            "customer_id": data.test_frame[opts["card"]].to_numpy(),
            "tx_time_days": data.test_frame[opts["day"]].to_numpy(),
            "fraud": (data.y_test >= 0.5).astype(np.int64),
        }
    )
    return metrics.card_precision_top_k(frame, p, k=int(opts["k"]))
