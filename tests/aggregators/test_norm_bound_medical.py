"""The norm bound on the medical job under a x10 attacker at VA (issue 24: `max_update_norm` caught it
in rounds 1-5 only: the bound is absolute while honest norms shrink).

Measured here (FedYogi, 15 rounds x 100 steps, seed 42, in-process engine = the coordinator's screen):
an absolute bound of 0.3 rejects VA in rounds 1-4, then lets its x10 update through; the relative
bound (``max_norm_ratio = 2``) holds every update within 2x the round's median norm in all 15 rounds,
never drops a site, and pulls the final model toward the clean one (distance 1.04 -> 0.80). In an
honest run the ratio drops no one (Switzerland, 2.4-5.5x the median, is clipped, not rejected),
which no rejecting bound achieves on this data (see ``fedcore.aggregators.screen``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcore.aggregators.screen import Screened, update_norm
from fedcore.config import load_job
from fedcore.harness.loop import run_inprocess
from tests.adversarial.coordinator import MEDICAL, make_site

HOSPITALS = ("cleveland", "hungary", "switzerland", "va")
ATTACK = ('attack.name="scaling"', 'attack.sites=["va"]', "attack.factor=10")


def _run(files: list[Path], *sets: str) -> tuple[list[np.ndarray], list[Screened]]:
    screened: list[Screened] = []
    g, _ = run_inprocess(
        load_job(MEDICAL / "jobs" / "default.toml", list(sets)), files, seed=42, screened=screened
    )
    return list(g), screened


def _distance(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum((x - y) ** 2)) for x, y in zip(a, b, strict=True))))


@pytest.mark.slow
def test_a_relative_bound_holds_a_x10_attacker_in_every_round(tmp_path: Path, shared_data: Path) -> None:
    files = [make_site(tmp_path, name=n) for n in HOSPITALS]
    clean, _ = _run(files)
    attacked, _ = _run(files, *ATTACK)
    _, by_absolute = _run(files, *ATTACK, "job.min_sites=3", "job.max_update_norm=0.3")
    caught = [r for r, s in enumerate(by_absolute, 1) if "va" in s.rejected]
    assert caught and max(caught) <= 5 and len(caught) < 15  # the failure: early rounds only
    relative, by_ratio = _run(files, *ATTACK, "job.max_norm_ratio=2")
    for s in by_ratio:
        assert not s.rejected and len(s.updates) == 4  # no site dropped
        assert s.bound is not None and max(update_norm(u) for u in s.updates) <= s.bound * (1 + 1e-9)
    assert sum("va" in s.clipped for s in by_ratio) >= 5
    assert _distance(relative, clean) < 0.85 * _distance(attacked, clean)
    _, honest = _run(files, "job.max_norm_ratio=2")
    assert all(not s.rejected and len(s.updates) == 4 for s in honest)
