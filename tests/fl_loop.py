"""An oracle for tests: the federated loop without Flower, over the same site runtime and aggregator.

Used to check the job files' accuracy over 5 seeds quickly, and that the Flower adapter computes
the same thing (tests/flower/test_simulation.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedcore.aggregators import Arrays, ClientUpdate, make_aggregator
from fedcore.clients.job import JobPrivacy
from fedcore.clients.site import SiteRuntime, round_seed
from fedcore.clients.trainer import TrainConfig
from fedcore.config import JobConfig
from fedcore.flower.server_app import _train_config
from fedcore.models import build_model, get_arrays


def run_loop(job: JobConfig, site_files: Sequence[Path], *, seed: int) -> float:
    """Mean accuracy over the sites' test sets of the final global model."""
    return run_loop_model(job, site_files, seed=seed)[0]


def run_loop_model(
    job: JobConfig, site_files: Sequence[Path], *, seed: int, state_dir: Path | None = None
) -> tuple[float, Arrays, list[SiteRuntime]]:
    """Like ``run_loop``; with ``state_dir`` the job's [privacy] is applied (ledgers kept there)."""
    sites = [SiteRuntime.load(p, state_dir) for p in site_files]
    privacy = None
    if state_dir is not None:
        privacy = JobPrivacy.from_job(
            job.raw, job_id=f"loop-{seed}", num_sites=len(sites), min_sites=len(sites)
        )
    agg_opts = {k: v for k, v in job.section("aggregator").items() if k != "name"}
    agg = make_aggregator(str(job.section("aggregator")["name"]), **agg_opts)
    spec = job.section("model")
    g = get_arrays(build_model(spec, len(sites[0].data.features), seed=seed))
    train = json.loads(str(_train_config(job)["train"]))
    cfg = TrainConfig.from_mapping(train)
    for r in range(1, job.rounds + 1):
        g = tuple(a.astype(np.float32).astype(np.float64) for a in g)  # as on the wire
        ups = []
        for s in sites:
            res = s.train(
                g,
                model_spec=spec,
                cfg=cfg,
                steps=int(train["local_steps"]),
                seed=round_seed(seed, r, s.site.name),
                job=privacy,
            )
            ups.append(ClientUpdate(delta=res.delta, num_examples=res.num_examples, site=s.site.name))
        g = tuple(a + b for a, b in zip(g, agg.aggregate(ups, server_round=r).step, strict=True))
    return float(np.mean([s.evaluate(g, model_spec=spec)["accuracy"] for s in sites])), g, sites
