"""``fedcore estimate JOB``: the HE cost of a job's rounds, from its model size, before running."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedcore.config import load_job, load_site
from fedcore.data import feature_names
from fedcore.errors import ConfigError
from fedcore.he.cost import estimate_cost
from fedcore.he.params import DEFAULT_PARAMS, HEParams, params_for_sites
from fedcore.models import build_model, get_arrays

__all__ = ["estimate_job", "model_size"]


def model_size(job_file: Path) -> tuple[int, int]:
    """(number of parameters, number of sites) of the job's model, from its app's site schemas."""
    from fedcore.harness.app import load_app

    app_dir = job_file.resolve().parent.parent
    if not (app_dir / "pyproject.toml").is_file():
        raise ConfigError(f"{job_file}: expected it in APP/jobs/ next to APP/pyproject.toml")
    app = load_app(app_dir)
    site = load_site(app.sites[0])
    job = load_job(job_file)
    model = build_model(job.model.as_table(), len(feature_names(site)), seed=0)
    return sum(a.size for a in get_arrays(model)), len(app.sites)


def estimate_job(
    job_file: Path, *, num_sites: int | None = None, params: HEParams | None = None
) -> dict[str, Any]:
    """Bytes, encryption/aggregation seconds and memory per round for the job, and the whole job's
    bytes as they travel: per site ``R`` encrypted updates up; ``R`` encrypted sums and the
    plaintext float32 initial model down (see ``fedcore.he.cost``). ``params``: the key set's
    (default: the ceremony's default for the number of sites)."""
    size, sites = model_size(job_file)
    job = load_job(job_file)
    n = num_sites or sites
    key_params = params if params is not None else params_for_sites(max(n, DEFAULT_PARAMS.max_sites))
    est = estimate_cost(size, num_sites=n, params=key_params).as_dict()
    est.pop("params", None)
    est["max_sites"] = key_params.max_sites
    est["rounds"] = job.rounds
    est["upload_bytes_whole_job"] = est["upload_bytes_per_round"] * job.rounds
    initial = 4 * size  # round 1's train message: the initial model, float32, in plaintext
    est["download_bytes_whole_job"] = n * (job.rounds * est["sum_bytes"] + initial)
    return est
