"""The contract suite itself: its declarations resolve as documented, and it catches broken rules."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from fedcore.aggregators import AggregateResult, ClientUpdate, FedAvg, GeometricMedian
from fedcore.testing import AggregatorContract


def _suite(**attrs: object) -> AggregatorContract:
    return type("TestX", (AggregatorContract,), {"make": lambda self: FedAvg(), **attrs})()


@pytest.mark.parametrize(
    ("attrs", "rule"),
    [
        ({}, "ratio"),
        ({"uses_weights": False}, "ignored"),  # the older spelling still works
        ({"uses_weights": True}, "ratio"),
        ({"weights": "counts"}, "counts"),
        ({"weights": "counts", "uses_weights": True}, "counts"),
        ({"weights": "ignored", "uses_weights": False}, "ignored"),
    ],
)
def test_weight_declarations_resolve(attrs: dict[str, object], rule: str) -> None:
    assert _suite(**attrs).weight_rule() == rule


@pytest.mark.parametrize(
    ("attrs", "match"),
    [
        (
            {"weights": "ratio", "uses_weights": False},
            "uses_weights = False and weights = 'ratio', which disagree",
        ),
        ({"weights": "ignored", "uses_weights": True}, "disagree; drop uses_weights"),
        ({"weights": "median"}, "must be one of 'ratio', 'counts', 'ignored', got 'median'"),
    ],
)
def test_inconsistent_weight_declarations_fail_clearly(attrs: dict[str, object], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        _suite(**attrs).test_weight_declaration_is_consistent()


class _CountDependent:
    """FedNova-like: the step scales with the total count, so ratios alone do not fix it."""

    def aggregate(self, updates: Sequence[ClientUpdate], *, server_round: int) -> AggregateResult:
        total = sum(u.num_examples for u in updates)
        mean = FedAvg().aggregate(updates, server_round=server_round).step
        return AggregateResult(step=tuple(m * total / (total + 10) for m in mean))


def test_counts_rule_passes_where_ratio_fails() -> None:
    suite = type("T", (AggregatorContract,), {"make": lambda self: _CountDependent()})
    with pytest.raises(AssertionError, match="only the ratio"):
        suite().test_weights_respected()
    suite.weights = "counts"
    suite().test_weights_respected()


def test_ignored_catches_a_weighted_rule() -> None:
    suite = _suite(weights="ignored")
    with pytest.raises(AssertionError, match="example counts changed the step"):
        suite.test_weights_respected()


class _SilentKrum:
    """Claims f = 1 and a minimum of 5, but averages whatever it gets: no refusal, no robustness."""

    f = 1

    def min_updates(self) -> int:
        return 5

    def aggregate(self, updates: Sequence[ClientUpdate], *, server_round: int) -> AggregateResult:
        return AggregateResult(step=FedAvg().aggregate(updates, server_round=server_round).step)


def test_suite_catches_a_rule_that_does_not_refuse_or_resist() -> None:
    suite = type("T", (AggregatorContract,), {"make": lambda self: _SilentKrum()})()
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        suite.test_too_few_updates_are_refused()
    with pytest.raises(AssertionError, match="from the honest mean"):
        suite.test_tolerates_f_outliers()


def test_a_count_weighted_robust_rule_survives_only_honest_counts() -> None:
    """The suite's outliers claim 1 example against a 'ratio' rule; claiming 10**6 owns the result."""
    suite = _suite(weights="ratio", make=lambda self: GeometricMedian(f=1, weighting="counts"))
    suite.test_tolerates_f_outliers()
    suite_liar = _suite(weights="ignored", make=lambda self: GeometricMedian(f=1, weighting="counts"))
    with pytest.raises(AssertionError, match="from the honest mean"):
        suite_liar.test_tolerates_f_outliers()
