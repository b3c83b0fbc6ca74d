"""Metrics on tiny cases computed by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from fedcore.errors import ConfigError, SchemaError
from fedcore.metrics import (
    GERMAN_COST_FN,
    GERMAN_COST_FP,
    accuracy,
    average_precision,
    card_precision_top_k,
    cost,
    roc_auc,
)

Y = [0, 0, 1, 1]
S = [0.1, 0.4, 0.35, 0.8]


def test_roc_auc_counts_correctly_ordered_pairs() -> None:
    # positive/negative pairs: (0.35, 0.1) ok, (0.35, 0.4) wrong, (0.8, *) ok twice -> 3/4
    assert roc_auc(Y, S) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.2, 0.2]) == pytest.approx(0.5)  # a tie counts half


def test_average_precision_is_the_step_area() -> None:
    # ranked: 0.8 (1) -> P=1, R=1/2; 0.4 (0); 0.35 (1) -> P=2/3, R=1: AP = 1/2 + 1/2 * 2/3
    assert average_precision(Y, S) == pytest.approx(5 / 6)


def test_accuracy_and_german_cost() -> None:
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == pytest.approx(0.5)
    y_true, y_pred = [1, 1, 0, 0, 0], [0, 1, 1, 0, 0]  # one bad called good, one good called bad
    assert cost(y_true, y_pred, cost_fp=GERMAN_COST_FP, cost_fn=GERMAN_COST_FN) == 6.0
    assert cost(y_true, y_true, cost_fp=1.0, cost_fn=5.0) == 0.0


def _two_days() -> tuple[pd.DataFrame, list[float]]:
    rows = [  # (day, customer, fraud, score)
        (0, 1, 0, 0.9),
        (0, 1, 1, 0.1),  # customer 1: max score 0.9, compromised on day 0
        (0, 2, 0, 0.8),
        (0, 3, 1, 0.3),
        (1, 1, 1, 0.95),
        (1, 3, 1, 0.7),
        (1, 4, 0, 0.2),
    ]
    df = pd.DataFrame(rows, columns=["tx_time_days", "customer_id", "fraud", "score"])
    return df.drop(columns="score"), df["score"].tolist()


def test_card_precision_top_k_by_hand() -> None:
    df, scores = _two_days()
    # day 0: top-2 cards {1, 2}, one compromised -> 1/2. day 1: card 1 was detected and is
    # blocked, top-2 {3, 4}, one compromised -> 1/2. Mean 0.5.
    assert card_precision_top_k(df, scores, k=2) == pytest.approx(0.5)
    # without removal day 1 is {1, 3}, both compromised -> mean (1/2 + 1) / 2
    assert card_precision_top_k(df, scores, k=2, remove_detected=False) == pytest.approx(0.75)
    # k larger than the number of cards still divides by k (handbook): day 0 has 2/4; cards 1
    # and 3 are then blocked, day 1 has only card 4 (genuine): 0/4. Mean 1/4.
    assert card_precision_top_k(df, scores, k=4) == pytest.approx(0.25)


def test_card_precision_ties_prefer_the_lower_customer_id() -> None:
    df = pd.DataFrame({"tx_time_days": [0, 0], "customer_id": [8, 3], "fraud": [0, 1]})
    assert card_precision_top_k(df, [0.5, 0.5], k=1) == 1.0


def test_bad_inputs_raise_fedcore_errors() -> None:
    with pytest.raises(SchemaError, match="both classes"):
        roc_auc([1, 1], [0.2, 0.3])
    with pytest.raises(SchemaError, match="0/1 labels, got values \\[0, 2\\]"):
        accuracy([0, 2], [0, 1])
    with pytest.raises(SchemaError, match="4 finite numbers"):
        average_precision(Y, S[:3])
    with pytest.raises(SchemaError, match="differ in length"):
        cost([0, 1], [0], cost_fp=1.0, cost_fn=5.0)
    with pytest.raises(ConfigError, match="cost_fp=-1"):
        cost([0, 1], [0, 1], cost_fp=-1.0, cost_fn=5.0)
    df, scores = _two_days()
    with pytest.raises(ConfigError, match="k must be >= 1, got 0"):
        card_precision_top_k(df, scores, k=0)
    with pytest.raises(SchemaError, match="customer_id"):
        card_precision_top_k(df.drop(columns="customer_id"), scores)
