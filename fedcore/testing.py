"""The aggregator contract suite: inherit it to test your own aggregator.

    from fedcore.testing import AggregatorContract

    class TestMine(AggregatorContract):
        def make(self):
            return Mine()

Every property here holds for any sensible aggregator. A subclass states what is special about its
rule with class attributes:

- ``mean_preserving = False``: identical updates need not give that update (server optimizers,
  medians, centered clipping).
- ``weights``: how example counts may enter the step. ``"ratio"`` (the default; FedAvg): only the
  ratios of the counts matter, and they do. ``"counts"``: the counts themselves change the step
  (FedNova's local step counts); only that they matter is checked. ``"ignored"``: the step never
  depends on the counts (unweighted robust rules, uniform weights under DP). ``uses_weights =
  False`` is the older spelling of ``weights = "ignored"`` and still works.
- ``tolerates = f``: the rule withstands ``f`` arbitrary updates (default: the aggregator's ``f``
  when it implements ``min_updates()``, i.e. is a ``RobustAggregator``); ``outlier_bound`` is how
  far from the honest mean its step may then be, with honest updates 0.1 apart and outliers 1e6 away.

An aggregator with ``min_updates()`` is given at least that many updates by every property, and must
refuse fewer with an ``AggregationError`` that names the minimum and the number it got.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from typing import Literal, get_args

import numpy as np
import pytest

from fedcore.aggregators.base import (
    AggregateResult,
    Aggregator,
    ClientUpdate,
    RobustAggregator,
    aggregator_state,
    load_aggregator_state,
)
from fedcore.errors import AggregationError

__all__ = ["AggregatorContract", "WeightRule", "random_updates"]

SHAPES = ((3, 2), (2,))
WeightRule = Literal["ratio", "counts", "ignored"]
HONEST_STD = 0.1  # spread of the honest updates in test_tolerates_f_outliers
OUTLIER_SIZE = 1e6  # how far its outliers are


def random_updates(
    n: int, *, seed: int = 0, shapes: Sequence[tuple[int, ...]] = SHAPES
) -> list[ClientUpdate]:
    """``n`` updates with random deltas and distinct example counts (deterministic by seed)."""
    rng = np.random.default_rng(seed)
    return [
        ClientUpdate(
            delta=tuple(rng.normal(size=s) for s in shapes),
            num_examples=int(rng.integers(1, 100)),
            site=f"site-{i}",
        )
        for i in range(n)
    ]


def _close(a: AggregateResult, b: AggregateResult, tol: float = 1e-9) -> bool:
    return all(np.allclose(x, y, atol=tol, rtol=0) for x, y in zip(a.step, b.step, strict=True))


class AggregatorContract:
    """Properties every aggregator must have; subclasses implement ``make``."""

    mean_preserving = True  # identical updates d -> step d; False for server optimizers, medians
    weights: WeightRule | None = None  # None: "ratio", or what the older uses_weights says
    uses_weights: bool | None = None  # older alias: False is weights = "ignored", True is "ratio"
    tolerates: int | None = None  # None: the aggregator's f if it has min_updates(), else 0
    outlier_bound = 1.0  # max ||step - honest mean|| in test_tolerates_f_outliers

    def make(self) -> Aggregator:
        raise NotImplementedError

    def weight_rule(self) -> WeightRule:
        """The declared ``weights``; ``TypeError`` when it is unknown or ``uses_weights`` disagrees."""
        cls, w, old = type(self).__name__, self.weights, self.uses_weights
        if w is not None and w not in get_args(WeightRule):
            raise TypeError(f"{cls}.weights must be one of 'ratio', 'counts', 'ignored', got {w!r}")
        if old is None:
            return w or "ratio"
        if w is not None and (w == "ignored") == bool(old):
            raise TypeError(
                f"{cls} sets uses_weights = {old} and weights = {w!r}, which disagree; drop uses_weights "
                "(the older spelling: False means weights = 'ignored') and keep weights"
            )
        return w or ("ratio" if old else "ignored")

    def least(self, agg: Aggregator) -> int:
        """The fewest updates ``agg`` accepts (its ``min_updates()``, else 1)."""
        return agg.min_updates() if isinstance(agg, RobustAggregator) else 1

    def updates(self, n: int, *, seed: int = 0) -> list[ClientUpdate]:
        """``random_updates`` with at least as many updates as ``make()`` accepts."""
        return random_updates(max(n, self.least(self.make())), seed=seed)

    def test_is_an_aggregator(self) -> None:
        assert isinstance(self.make(), Aggregator)

    def test_weight_declaration_is_consistent(self) -> None:
        self.weight_rule()

    def test_permutation_invariant(self) -> None:
        ups = self.updates(5)
        a = self.make().aggregate(ups, server_round=1)
        b = self.make().aggregate(list(reversed(ups)), server_round=1)
        assert _close(a, b)

    def test_zero_updates_are_a_fixed_point(self) -> None:
        n = max(3, self.least(self.make()))
        ups = [ClientUpdate(delta=tuple(np.zeros(s) for s in SHAPES), num_examples=k + 1) for k in range(n)]
        res = self.make().aggregate(ups, server_round=1)
        assert all(np.all(s == 0) for s in res.step)

    def test_identical_updates_give_that_update(self) -> None:
        if not self.mean_preserving:
            pytest.skip("not a mean-preserving aggregator")
        d = random_updates(1)[0].delta
        n = max(4, self.least(self.make()))
        ups = [ClientUpdate(delta=d, num_examples=k + 1, site=str(k)) for k in range(n)]
        res = self.make().aggregate(ups, server_round=1)
        assert all(np.allclose(s, x) for s, x in zip(res.step, d, strict=True))

    def test_one_client(self) -> None:
        agg = self.make()
        if self.least(agg) > 1:  # a robust rule must refuse, not silently lose its guarantee
            with pytest.raises(AggregationError, match=rf"\b{self.least(agg)}\b.*got 1\b"):
                agg.aggregate(random_updates(1), server_round=1)
            return
        res = agg.aggregate(random_updates(1), server_round=1)
        assert [s.shape for s in res.step] == list(SHAPES)
        assert all(np.all(np.isfinite(s)) for s in res.step)

    def test_too_few_updates_are_refused(self) -> None:
        agg = self.make()
        if not isinstance(agg, RobustAggregator):
            pytest.skip("no min_updates(): any non-empty round is accepted")
        least = agg.min_updates()
        assert isinstance(least, int) and least >= 1, f"min_updates() must be an int >= 1, got {least!r}"
        if least > 1:
            with pytest.raises(AggregationError, match=rf"\b{least}\b.*got {least - 1}\b"):
                agg.aggregate(random_updates(least - 1), server_round=1)
        res = self.make().aggregate(random_updates(least), server_round=1)
        assert all(np.all(np.isfinite(s)) for s in res.step)

    def test_empty_input_raises(self) -> None:
        with pytest.raises(AggregationError, match="empty"):
            self.make().aggregate([], server_round=1)

    def test_mismatched_shapes_raise(self) -> None:
        n = max(2, self.least(self.make()))
        ups = random_updates(n) + random_updates(1, shapes=((2, 2),))
        with pytest.raises(AggregationError, match="shapes"):
            self.make().aggregate(ups, server_round=1)

    def test_inputs_not_mutated(self) -> None:
        ups = self.updates(4)
        before = copy.deepcopy([u.delta for u in ups])
        self.make().aggregate(ups, server_round=1)
        for u, b in zip(ups, before, strict=True):
            assert all(np.array_equal(x, y) for x, y in zip(u.delta, b, strict=True))

    def test_weights_respected(self) -> None:
        rule = self.weight_rule()
        if rule == "ignored":
            ups = self.updates(5)
            lied = [replace(u, num_examples=10**6 if k == 0 else 1) for k, u in enumerate(ups)]
            a, b = self.make().aggregate(ups, server_round=1), self.make().aggregate(lied, server_round=1)
            assert _close(a, b), "weights = 'ignored' is declared, but example counts changed the step"
            return
        n = max(2, self.least(self.make()))

        def run(w1: int, w2: int) -> AggregateResult:
            ups = [ClientUpdate(delta=(np.ones((3, 2)), np.ones(2)), num_examples=w1, site="a")]
            zeros = (np.zeros((3, 2)), np.zeros(2))
            ups += [ClientUpdate(delta=zeros, num_examples=w2, site=f"b{k}") for k in range(n - 1)]
            return self.make().aggregate(ups, server_round=1)

        if rule == "ratio":
            assert _close(run(90, 10), run(9, 1)), "only the ratio of example counts may matter"
        assert not _close(run(90, 10), run(10, 90)), "example counts must change the step"

    def test_tolerates_f_outliers(self) -> None:
        """``f`` colluding outliers ``OUTLIER_SIZE`` away among honest updates ``HONEST_STD`` apart:
        the step stays within ``outlier_bound`` of the honest mean, at the smallest federation and
        with ``f`` more. The outliers claim 10**6 examples when the rule ignores counts, else 1 (a
        count-weighted rule is robust only to honest counts; that is its documented limit)."""
        agg = self.make()
        f = self.tolerates if self.tolerates is not None else int(getattr(agg, "f", 0) or 0)
        if not (isinstance(agg, RobustAggregator) or self.tolerates) or f == 0:
            pytest.skip("declares no tolerance to arbitrary updates")
        liar_count = 10**6 if self.weight_rule() == "ignored" else 1
        for n in (self.least(agg), self.least(agg) + f):
            honest = _near_ones(n - f, seed=n)
            bad = tuple(OUTLIER_SIZE * np.resize([1.0, -1.0], s) for s in SHAPES)
            ups = honest + [ClientUpdate(delta=bad, num_examples=liar_count, site=f"x{k}") for k in range(f)]
            step = self.make().aggregate(ups, server_round=1).step
            mean = [np.mean([u.delta[i] for u in honest], axis=0) for i in range(len(SHAPES))]
            err = float(np.sqrt(sum(np.sum((s - m) ** 2) for s, m in zip(step, mean, strict=True))))
            assert err <= self.outlier_bound, f"n={n}, f={f}: step is {err:.3g} from the honest mean"

    def test_a_restored_state_takes_the_same_steps(self) -> None:
        """A resumed job restores the aggregator's checkpointed state: from there it must step as the
        uninterrupted aggregator does (for a stateless one, a fresh instance already does)."""
        first, rounds = self.make(), [self.updates(3, seed=s) for s in range(4)]
        for r, ups in enumerate(rounds[:2], start=1):
            first.aggregate(ups, server_round=r)
        second = self.make()
        load_aggregator_state(second, aggregator_state(first))
        for r, ups in enumerate(rounds[2:], start=3):
            assert _close(first.aggregate(ups, server_round=r), second.aggregate(ups, server_round=r))


def _near_ones(n: int, *, seed: int) -> list[ClientUpdate]:
    """``n`` honest updates: every coordinate 1 plus N(0, HONEST_STD^2), counts in 1..99."""
    rng = np.random.default_rng(seed)
    return [
        ClientUpdate(
            delta=tuple(1.0 + HONEST_STD * rng.normal(size=s) for s in SHAPES),
            num_examples=int(rng.integers(1, 100)),
            site=f"h{k}",
        )
        for k in range(n)
    ]
