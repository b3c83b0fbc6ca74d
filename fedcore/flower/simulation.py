"""Run an app's ServerApp and one ClientApp per site in Flower's simulation engine.

Flower 1.42 deprecates the Python entry point ``flwr.simulation.run_simulation`` (it warns, then
calls ``flwr.simulation.run_simulation._run_simulation``) in favour of ``flwr run`` against a local
SuperLink in simulation mode, whose ``flwr-simulation`` process installs the app's FAB under
``$FLWR_HOME/apps`` and calls the same ``_run_simulation`` (``flwr/simulation/app.py``,
``run_simulation_process``). fedcore calls ``_run_simulation`` in-process, as that process does:
the same engine and results, with the coordinator's progress callback, its exceptions and the
sites' state folders kept in this process. Going through ``flwr run`` instead would add a
SuperLink and a subprocess per run (measured: about 2 s more on the medical job), copy the app
(relative site and data paths then point elsewhere), pass everything as run-config strings, and
report a failed run with exit code 0. ``tests/flower/test_simulation_entry.py`` pins the call.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedcore.clients.local import SimulatedSite
from fedcore.flower.client_app import make_client_app
from fedcore.flower.protocol import ServerSettings
from fedcore.flower.server_app import make_server_app
from fedcore.flower.strategy import Tamper

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
    tamper: Tamper | None = None,
    simulation: SimulatedSite | None = None,
) -> None:
    """Simulate the job with one virtual SuperNode per site (Ray backend, 1 CPU per site).

    Each site's state (ledger, audit log, HE secret key) lives in ``state_dir/<site>/`` (default
    ``out_dir/sites/<site>/``);
    ``he_public_key`` is the coordinator's public context of the simulation's key ceremony;
    ``resume``: the run directory whose checkpointed job continues. ``tamper`` and ``simulation``: a
    job's ``[attack]`` at the coordinator and at the sites (``fedcore.harness.attacks.attack_hooks``).
    """
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    settings = ServerSettings(
        job_file=job_file,
        overrides=overrides,
        out_dir=out_dir,
        expected_sites=len(sites),
        on_round=on_round,
        he_public_key=he_public_key,
        write_summary=False,
        resume=resume,
        tamper=tamper,
    )
    with _flower_log(None if verbose or out_dir is None else out_dir / "simulation.log"):
        _run_simulation(
            server_app=make_server_app(app_dir, settings),
            client_app=make_client_app(
                app_dir,
                sites=list(sites),
                state_dir=state_dir if state_dir is not None or out_dir is None else out_dir / "sites",
                simulation=simulation,
            ),
            num_supernodes=len(sites),
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"logging_level": "ERROR", "log_to_driver": verbose},
            },
            verbose_logging=verbose,
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
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
