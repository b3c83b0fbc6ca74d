"""The aggregator contract suite: inherit it to test your own aggregator.

    from fedcore.testing import AggregatorContract

    class TestMine(AggregatorContract):
        def make(self):
            return Mine()

Every property here holds for any sensible aggregator; a subclass may set ``mean_preserving =
False`` (a median, a robust rule) to skip the one property only averaging rules satisfy.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import pytest

from fedcore.aggregators.base import (
    AggregateResult,
    Aggregator,
    ClientUpdate,
    aggregator_state,
    load_aggregator_state,
)
from fedcore.errors import AggregationError

__all__ = ["AggregatorContract", "random_updates"]

SHAPES = ((3, 2), (2,))


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
    uses_weights = True  # the step depends on num_examples; False for unweighted robust rules

    def make(self) -> Aggregator:
        raise NotImplementedError

    def test_is_an_aggregator(self) -> None:
        assert isinstance(self.make(), Aggregator)

    def test_permutation_invariant(self) -> None:
        ups = random_updates(5)
        a = self.make().aggregate(ups, server_round=1)
        b = self.make().aggregate(list(reversed(ups)), server_round=1)
        assert _close(a, b)

    def test_zero_updates_are_a_fixed_point(self) -> None:
        ups = [ClientUpdate(delta=tuple(np.zeros(s) for s in SHAPES), num_examples=k + 1) for k in range(3)]
        res = self.make().aggregate(ups, server_round=1)
        assert all(np.all(s == 0) for s in res.step)

    def test_identical_updates_give_that_update(self) -> None:
        if not self.mean_preserving:
            pytest.skip("not a mean-preserving aggregator")
        d = random_updates(1)[0].delta
        ups = [ClientUpdate(delta=d, num_examples=k + 1, site=str(k)) for k in range(4)]
        res = self.make().aggregate(ups, server_round=1)
        assert all(np.allclose(s, x) for s, x in zip(res.step, d, strict=True))

    def test_one_client(self) -> None:
        res = self.make().aggregate(random_updates(1), server_round=1)
        assert [s.shape for s in res.step] == list(SHAPES)
        assert all(np.all(np.isfinite(s)) for s in res.step)

    def test_empty_input_raises(self) -> None:
        with pytest.raises(AggregationError, match="empty"):
            self.make().aggregate([], server_round=1)

    def test_mismatched_shapes_raise(self) -> None:
        ups = random_updates(2) + random_updates(1, shapes=((2, 2),))
        with pytest.raises(AggregationError, match="shapes"):
            self.make().aggregate(ups, server_round=1)

    def test_inputs_not_mutated(self) -> None:
        ups = random_updates(4)
        before = copy.deepcopy([u.delta for u in ups])
        self.make().aggregate(ups, server_round=1)
        for u, b in zip(ups, before, strict=True):
            assert all(np.array_equal(x, y) for x, y in zip(u.delta, b, strict=True))

    def test_weights_respected(self) -> None:
        if not self.uses_weights:
            pytest.skip("this aggregator ignores example counts by design")
        d1 = (np.ones((3, 2)), np.ones(2))
        d2 = (np.zeros((3, 2)), np.zeros(2))

        def run(w1: int, w2: int) -> AggregateResult:
            ups = [
                ClientUpdate(delta=d1, num_examples=w1, site="a"),
                ClientUpdate(delta=d2, num_examples=w2, site="b"),
            ]
            return self.make().aggregate(ups, server_round=1)

        assert _close(run(90, 10), run(9, 1)), "only the ratio of example counts may matter"
        assert not _close(run(90, 10), run(10, 90)), "example counts must change the step"

    def test_a_restored_state_takes_the_same_steps(self) -> None:
        """A resumed job restores the aggregator's checkpointed state: from there it must step as the
        uninterrupted aggregator does (for a stateless one, a fresh instance already does)."""
        first, rounds = self.make(), [random_updates(3, seed=s) for s in range(4)]
        for r, ups in enumerate(rounds[:2], start=1):
            first.aggregate(ups, server_round=r)
        second = self.make()
        load_aggregator_state(second, aggregator_state(first))
        for r, ups in enumerate(rounds[2:], start=3):
            assert _close(first.aggregate(ups, server_round=r), second.aggregate(ups, server_round=r))
