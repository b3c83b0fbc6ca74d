"""A job's [privacy.client_dp] builds the right coordinator-side wrapper, adaptive clipping included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcore.aggregators import ClientUpdate
from fedcore.clients.job import JobPrivacy
from fedcore.config import load_job
from fedcore.errors import ConfigError
from fedcore.flower.server_app import _make_aggregator
from fedcore.privacy.client_dp import ClientLevelDP

APP = Path(__file__).resolve().parents[2] / "examples" / "medical"


def _job(*sets: str) -> tuple[object, JobPrivacy]:
    job = load_job(APP / "jobs" / "client_dp.toml", ["privacy.secure_noise=false", *sets])
    return job, JobPrivacy.from_job(job.raw, job_id="t", num_sites=40, min_sites=40)


def test_adaptive_clipping_moves_the_clip_norm() -> None:
    job, privacy = _job(
        'privacy.client_dp.mode="central"',
        'privacy.client_dp.clipping="adaptive"',
        "privacy.client_dp.noise_multiplier=1.0",
        "privacy.client_dp.clipping_norm=0.1",
    )
    assert privacy.client_dp is not None and privacy.client_dp.clipping == "adaptive"
    with pytest.warns(UserWarning, match="(?i)reproducible|not for production"):
        agg = _make_aggregator(job, privacy)  # type: ignore[arg-type]
    assert isinstance(agg, ClientLevelDP)
    rng = np.random.default_rng(0)
    ups = [ClientUpdate(delta=(rng.normal(size=5),), num_examples=1, site=str(i)) for i in range(40)]
    result = agg.aggregate(ups, server_round=1)
    assert result.dp_events, "each round's release is described as a dp_accounting event"
    assert agg.clipping_norm != pytest.approx(0.1), "all 40 updates exceed 0.1: the clip norm must grow"


def test_adaptive_clipping_is_refused_in_distributed_mode() -> None:
    with pytest.raises(ConfigError, match="adaptive with mode = 'central' only"):
        _job('privacy.client_dp.clipping="adaptive"')
