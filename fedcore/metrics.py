"""Metrics for the examples: ranking (ROC AUC, AUPRC), card precision top-k, accuracy and cost;
for the other tasks balanced accuracy and macro AUC (classes), MAE and R2 (regression) and Harrell's
concordance index (survival).

Threshold-free metrics are scikit-learn's; card precision top-k follows Le Borgne et al.,
"Reproducible Machine Learning for Credit Card Fraud Detection - Practical Handbook" (2022),
section 4.4 "Precision top-k metrics". The cost matrix of the Statlog German credit data set
(``german.doc``) charges 5 for predicting *good* for a bad applicant and 1 for the reverse: with
*bad* as the positive class 1, call ``cost(y, p, cost_fp=GERMAN_COST_FP, cost_fn=GERMAN_COST_FN)``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedcore.errors import ConfigError, SchemaError

__all__ = [
    "GERMAN_COST_FN",
    "GERMAN_COST_FP",
    "accuracy",
    "average_precision",
    "balanced_accuracy",
    "card_precision_top_k",
    "concordance_index",
    "cost",
    "macro_auc",
    "mean_absolute_error",
    "r2_score",
    "roc_auc",
]

GERMAN_COST_FP = 1.0  # a good applicant (0) predicted bad (1)
GERMAN_COST_FN = 5.0  # a bad applicant (1) predicted good (0)


def roc_auc(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve of ``scores`` (higher = more likely 1) for 0/1 labels ``y_true``."""
    y = _labels(y_true, "y_true")
    s = _scores(scores, len(y))
    _need_both_classes(y)
    from sklearn.metrics import roc_auc_score  # here: reading a job file never loads sklearn

    return float(roc_auc_score(y, s))


def average_precision(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Average precision (area under the precision-recall curve, AUPRC) of ``scores``."""
    y = _labels(y_true, "y_true")
    s = _scores(scores, len(y))
    _need_both_classes(y)
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, s))


def accuracy(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
    """Fraction of predictions equal to the labels."""
    y, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    _same_length(y, p)
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(y, p))


def balanced_accuracy(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
    """Mean over the classes present in ``y_true`` of the share of that class predicted right (its
    recall; Brodersen et al. 2010). A model predicting the majority class everywhere scores 1/K."""
    y, p = np.asarray(y_true).astype(np.int64), np.asarray(y_pred).astype(np.int64)
    if y.shape != p.shape or y.ndim != 1 or not len(y):
        raise SchemaError(f"y_true and y_pred must be two 1-d arrays of one length, got {y.shape}, {p.shape}")
    return float(np.mean([np.mean(p[y == k] == k) for k in np.unique(y)]))


def macro_auc(y_true: npt.ArrayLike, probabilities: npt.ArrayLike) -> float:
    """One-vs-rest ROC AUC averaged over the classes (columns of ``probabilities``) that occur in
    ``y_true`` without being all of it; NaN when no class qualifies."""
    y = np.asarray(y_true).astype(np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != len(y):
        raise SchemaError(f"probabilities must have shape ({len(y)}, classes), got {p.shape}")
    aucs = [roc_auc(y == k, p[:, k]) for k in range(p.shape[1]) if 0 < np.sum(y == k) < len(y)]
    return float(np.mean(aucs)) if aucs else float("nan")


def mean_absolute_error(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
    y, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    return float(np.mean(np.abs(y - p)))


def r2_score(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot``; NaN when ``y_true`` is constant."""
    y, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    total = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - p) ** 2)) / total if total > 0 else float("nan")


def concordance_index(time: npt.ArrayLike, risk: npt.ArrayLike, event: npt.ArrayLike) -> float:
    """Harrell's C-index (Harrell et al. 1996) of risk scores (higher = earlier event).

    A pair is comparable when the earlier time has an event, or when the times tie and exactly one
    of the two has an event (that one is the earlier); it is concordant when the earlier one has the
    higher risk, and a tie in risk counts one half. The rules of ``lifelines.utils.concordance_index``
    (called with ``-risk``), which FLamby's Fed-TCGA-BRCA metric uses. NaN without a comparable pair.
    """
    t, r = np.asarray(time, dtype=np.float64), np.asarray(risk, dtype=np.float64)
    e = np.asarray(event, dtype=np.float64) > 0.5
    if not (t.shape == r.shape == e.shape) or t.ndim != 1:
        raise SchemaError(
            f"time, risk and event must be 1-d of one length, got {t.shape}, {r.shape}, {e.shape}"
        )
    first = (t[:, None] < t[None, :]) & e[:, None]  # i leaves first, with an event
    tied = (t[:, None] == t[None, :]) & e[:, None] & ~e[None, :]  # same time: the event is first
    comparable = first | tied
    pairs = int(comparable.sum())
    if pairs == 0:
        return float("nan")
    higher = r[:, None] > r[None, :]
    same = r[:, None] == r[None, :]
    return float((np.sum(comparable & higher) + 0.5 * np.sum(comparable & same)) / pairs)


def cost(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, *, cost_fp: float, cost_fn: float) -> float:
    """Total misclassification cost: ``cost_fp * #false positives + cost_fn * #false negatives``.

    Divide by ``len(y_true)`` for the mean cost per case.
    """
    if not (cost_fp >= 0 and cost_fn >= 0):
        raise ConfigError(f"costs must be >= 0, got cost_fp={cost_fp}, cost_fn={cost_fn}")
    y, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    _same_length(y, p)
    false_pos = int(np.sum((y == 0) & (p == 1)))
    false_neg = int(np.sum((y == 1) & (p == 0)))
    return float(cost_fp * false_pos + cost_fn * false_neg)


def card_precision_top_k(
    df_test: pd.DataFrame, scores: npt.ArrayLike, *, k: int = 100, remove_detected: bool = True
) -> float:
    """Mean over days of the share of truly compromised cards among the ``k`` most suspicious.

    Each day (``tx_time_days``), a customer's score is the maximum over its transactions; the
    ``k`` customers with the highest scores (ties: lower ``customer_id`` first) are checked, and
    the day's precision is the number of them with a fraud that day divided by ``k``. With
    ``remove_detected`` (the handbook's default) a card detected on one day is left out on the
    following days, since the bank blocked it.

    Raises
    ------
    SchemaError
        When a column is missing or ``scores`` does not match the rows.
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}; pass the number of cards checked per day")
    missing = [c for c in ("customer_id", "tx_time_days", "fraud") if c not in df_test.columns]
    if missing:
        raise SchemaError(f"df_test lacks column(s) {missing}; got {list(df_test.columns)}")
    s = _scores(scores, len(df_test))
    frame = df_test[["customer_id", "tx_time_days", "fraud"]].assign(score=s)
    daily = frame.groupby(["tx_time_days", "customer_id"], sort=True).max().reset_index()
    detected: set[int] = set()
    precisions = []
    for _, day_cards in daily.groupby("tx_time_days", sort=True):
        cards = day_cards[~day_cards["customer_id"].isin(list(detected))]
        top = cards.sort_values(["score", "customer_id"], ascending=[False, True]).head(k)
        hits = top.loc[top["fraud"] == 1, "customer_id"]
        precisions.append(len(hits) / k)
        if remove_detected:
            detected.update(int(c) for c in hits)
    return float(np.mean(precisions)) if precisions else float("nan")


def _labels(values: npt.ArrayLike, name: str) -> npt.NDArray[np.int64]:
    arr: npt.NDArray[np.generic] = np.asarray(values)
    if arr.ndim != 1 or not np.isin(arr, (0, 1)).all():
        shown = np.unique(arr)[:5].tolist() if arr.size else []
        raise SchemaError(f"{name} must be a 1-d array of 0/1 labels, got values {shown}")
    return arr.astype(np.int64)


def _scores(scores: npt.ArrayLike, n: int) -> npt.NDArray[np.float64]:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.shape != (n,) or not np.isfinite(arr).all():
        raise SchemaError(f"scores must be {n} finite numbers (one per row), got shape {arr.shape}")
    return arr


def _same_length(y: npt.NDArray[np.int64], p: npt.NDArray[np.int64]) -> None:
    if len(y) != len(p):
        raise SchemaError(f"y_true and y_pred differ in length: {len(y)} != {len(p)}")


def _need_both_classes(y: npt.NDArray[np.int64]) -> None:
    if len(np.unique(y)) != 2:
        raise SchemaError(
            f"y_true must hold both classes 0 and 1, got only {np.unique(y).tolist()}; "
            "evaluate on a set with at least one fraud and one genuine case"
        )
