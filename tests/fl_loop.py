"""An oracle for tests: the federated loop without Flower (``fedcore.harness.loop``), scored.

Used to check the job files' accuracy over 5 seeds quickly, and that the Flower adapter computes
the same thing (tests/flower/test_simulation.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedcore.aggregators import Arrays
from fedcore.clients.evaluation import evaluate_site
from fedcore.clients.runtime import SiteRuntime
from fedcore.config import JobSpec
from fedcore.harness.loop import run_inprocess
from fedcore.models import build_model, set_arrays


def run_loop(job: JobSpec, site_files: Sequence[Path], *, seed: int) -> float:
    """Mean accuracy over the sites' test sets of the final global model."""
    return run_loop_model(job, site_files, seed=seed)[0]


def run_loop_model(
    job: JobSpec, site_files: Sequence[Path], *, seed: int, state_dir: Path | None = None
) -> tuple[float, Arrays, list[SiteRuntime]]:
    """Like ``run_loop``, also returning the model and the sites (their state in ``state_dir``)."""
    g, sites = run_inprocess(job, site_files, seed=seed, state_dir=state_dir)
    model = build_model(job.model.as_table(), len(sites[0].data.features), seed=0)
    set_arrays(model, g)
    accs = [evaluate_site(model, s.data)["accuracy"] for s in sites]
    return float(np.mean(accs)), g, sites
