"""The job's [evaluate] options reach the per-site scores: card precision per day, and bad options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedcore.clients.evaluation import evaluate_site
from fedcore.config import CardPrecision, EvaluateSpec, load_job
from fedcore.data import SiteData
from fedcore.errors import ConfigError
from fedcore.metrics import card_precision_top_k

ROOT = Path(__file__).resolve().parents[1]


def _site(columns: dict[str, list[int]]) -> SiteData:
    x = np.array([[3.0], [2.0], [1.0], [0.0], [2.5], [0.5]], dtype=np.float32)
    y = np.array([1, 0, 1, 0, 0, 1], dtype=np.float32)
    return SiteData("bank_9", x, y, x, y, ("x",), pd.DataFrame(columns))


def _identity() -> torch.nn.Module:
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(-1.5)
    return model


def test_card_precision_is_computed_from_the_sites_card_and_day_columns() -> None:
    data = _site({"card": [1, 2, 3, 1, 2, 3], "day": [0, 0, 0, 1, 1, 1]})
    got = evaluate_site(_identity(), data, EvaluateSpec(card_precision=CardPrecision(1, "card", "day")))
    frame = pd.DataFrame({"customer_id": [1, 2, 3, 1, 2, 3], "tx_time_days": [0, 0, 0, 1, 1, 1]})
    scores = torch.sigmoid(torch.from_numpy(data.x_test) - 1.5).squeeze(-1).double().numpy()
    want = card_precision_top_k(frame.assign(fraud=data.y_test.astype(int)), scores, k=1)
    # day 0: card 1 (score 3.0) is a fraud -> 1/1; day 1: card 1 is detected, so card 2 (2.5) -> 0
    assert got["card_precision_top_k"] == want == 0.5
    assert "auprc" in got and "card_precision_top_k" not in evaluate_site(_identity(), data)


def test_missing_card_column_names_the_site_and_the_fix() -> None:
    data = _site({"day": [0, 0, 0, 1, 1, 1]})
    with pytest.raises(ConfigError, match=r"site 'bank_9'.*\['customer_id'\].*identifier"):
        evaluate_site(_identity(), data, EvaluateSpec(card_precision=CardPrecision(k=1, day="day")))


def test_bad_card_precision_options_fail_when_the_job_loads() -> None:
    job = ROOT / "examples" / "finance" / "jobs" / "default.toml"
    card = load_job(job).evaluate.card_precision
    assert card is not None and card.k == 10
    bad = ["evaluate.card_precision.k=0", "evaluate.card_precision.kard=x"]
    with pytest.raises(
        ConfigError, match=r"(?s)k: must be >= 1, got 0.*unknown key 'kard' \(did you mean 'card'\?\)"
    ):
        load_job(job, bad)
