"""An oracle for tests: the federated loop without Flower (``fedcore.loop``), scored.

Used to check the job files' accuracy over 5 seeds quickly, and that the Flower adapter computes
the same thing (tests/flower/test_simulation.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedcore.aggregators import Arrays
from fedcore.clients.site import SiteRuntime
from fedcore.config import JobConfig
from fedcore.loop import run_inprocess


def run_loop(job: JobConfig, site_files: Sequence[Path], *, seed: int) -> float:
    """Mean accuracy over the sites' test sets of the final global model."""
    return run_loop_model(job, site_files, seed=seed)[0]


def run_loop_model(
    job: JobConfig, site_files: Sequence[Path], *, seed: int, state_dir: Path | None = None
) -> tuple[float, Arrays, list[SiteRuntime]]:
    """Like ``run_loop``; with ``state_dir`` the job's [privacy] is applied (ledgers kept there)."""
    g, sites = run_inprocess(job, site_files, seed=seed, state_dir=state_dir)
    spec = job.section("model")
    return float(np.mean([s.evaluate(g, model_spec=spec)["accuracy"] for s in sites])), g, sites
