"""Run an app's ServerApp and one ClientApp per site in Flower's simulation engine."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedcore.flower.client_app import make_client_app
from fedcore.flower.server_app import ServerSettings, make_server_app

__all__ = ["simulate"]


def simulate(
    app_dir: Path,
    job_file: Path,
    sites: Sequence[Path],
    *,
    overrides: Sequence[str] = (),
    out_dir: Path | None = None,
    on_round: Callable[[Any], None] | None = None,
    verbose: bool = False,
    he_public_key: Path | None = None,
    state_dir: Path | None = None,
    resume: Path | None = None,
) -> None:
    """Simulate the job with one virtual SuperNode per site (Ray backend, 1 CPU per site).

    Each site's state (ledger, audit log, HE secret key) lives in ``state_dir/<site>/`` (default
    ``out_dir/sites/<site>/``);
    ``he_public_key`` is the coordinator's public context of the simulation's key ceremony;
    ``resume``: the run directory whose checkpointed job continues.
    """
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation import run_simulation

    settings = ServerSettings(
        job_file=job_file,
        overrides=overrides,
        out_dir=out_dir,
        expected_sites=len(sites),
        on_round=on_round,
        he_public_key=he_public_key,
        write_summary=False,
        resume=resume,
    )
    with _flower_log(None if verbose or out_dir is None else out_dir / "simulation.log"):
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(
            server_app=make_server_app(app_dir, settings),
            client_app=make_client_app(
                app_dir,
                sites=list(sites),
                state_dir=state_dir if state_dir is not None or out_dir is None else out_dir / "sites",
            ),
            num_supernodes=len(sites),
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"logging_level": "ERROR", "log_to_driver": verbose},
            },
            verbose_logging=verbose,
        )


@contextmanager
def _flower_log(path: Path | None) -> Iterator[None]:
    """Flower's and fedcore's log lines (tracebacks included) go to ``path``, not the console."""
    with warnings.catch_warnings():
        if path is None:
            yield
            return
        loggers = [logging.getLogger("flwr"), logging.getLogger("fedcore")]
        saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        for lg in loggers:
            lg.handlers, lg.propagate = [handler], False
            lg.setLevel(logging.INFO)
        try:
            yield
        finally:
            for lg, (handlers, level, propagate) in zip(loggers, saved, strict=True):
                lg.handlers, lg.propagate = handlers, propagate
                lg.setLevel(level)
            handler.close()
