"""Where fedcore's coordinator spends its time in a round, measured inside the ServerApp.

``CoordinatorProfile`` wraps (for the duration of a ``with`` block) the strategy's four round
methods and the parts inside them that fedcore adds to plain FedAvg: the checks of every train and
evaluate reply (``fedcore.flower.replies``), the aggregator, and the checkpoint written after every
round; and ``_write_outputs`` (metrics.json, summary: once per job). ``per_round(timed_from)``:
mean ms per round over rounds ``>= timed_from``; nested parts are also inside their outer method.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from typing import Any

__all__ = ["CoordinatorProfile"]


class CoordinatorProfile:
    def __init__(self) -> None:
        self.round = 0
        self.seconds: defaultdict[tuple[str, int], float] = defaultdict(float)
        self._saved: list[tuple[Any, str, Any]] = []

    def _wrap(self, owner: Any, name: str, label: str, *, sets_round: bool = False) -> None:
        original = getattr(owner, name)
        prof = self

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if sets_round:
                prof.round = int(args[1])  # (self, server_round, ...)
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                prof.seconds[(label, prof.round)] += time.perf_counter() - t0

        self._saved.append((owner, name, original))
        setattr(owner, name, timed)

    def __enter__(self) -> CoordinatorProfile:
        from fedcore.aggregators import make_aggregator
        from fedcore.flower import server_app, strategy
        from fedcore.flower.strategy import FedcoreStrategy

        s = FedcoreStrategy
        self._wrap(s, "configure_train", "configure_train", sets_round=True)
        self._wrap(s, "aggregate_train", "aggregate_train")
        self._wrap(s, "configure_evaluate", "configure_evaluate")
        self._wrap(s, "aggregate_evaluate", "aggregate_evaluate")
        self._wrap(s, "_validate", "aggregate_train: train reply checks")
        self._wrap(type(make_aggregator("fedavg")), "aggregate", "aggregate_train: aggregator (FedAvg)")
        self._wrap(strategy.checks, "check_scores", "aggregate_evaluate: evaluate reply checks")
        self._wrap(server_app, "save_checkpoint", "aggregate_evaluate: checkpoint write")
        self._wrap(server_app, "_write_outputs", "per job: metrics.json and outputs")
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()

    def per_round(self, timed_from: int, rounds: int) -> dict[str, float]:
        """Mean ms per timed round for each part (``per job`` parts: their total ms)."""
        out: dict[str, float] = {}
        for (label, rnd), s in sorted(self.seconds.items()):
            if label.startswith("per job"):
                out[label] = out.get(label, 0.0) + s * 1e3
            elif rnd >= timed_from:
                out[label] = out.get(label, 0.0) + s * 1e3 / rounds
        return {k: round(v, 3) for k, v in out.items()}


def timed_sum(parts: dict[str, float]) -> float:
    """The four round methods' ms per round (the coordinator's own work in a round)."""
    outer = ("configure_train", "aggregate_train", "configure_evaluate", "aggregate_evaluate")
    return round(sum(parts.get(k, 0.0) for k in outer), 3)
