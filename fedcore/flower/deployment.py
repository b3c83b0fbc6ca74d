"""The coordinator under ``flwr run`` (Flower's Deployment Engine): one command resumes a stopped job.

A job submitted with ``flwr run APP CONNECTION --run-config "job='jobs/dp.toml' out-dir='OUT' set='...'"``
records what it was asked in ``OUT/deployment.json`` (the run config's ``job``, ``set``, ``rounds`` and
``seed``) before its first round. Continuing it then needs only the folder::

    flwr run APP CONNECTION --stream --run-config "resume='OUT'"

The recorded settings are used again (the sites check the job's digest: the same job file and ``set``
give the same digest); a ``job``, ``set``, ``rounds`` or ``seed`` that differs from both the record and
the app's defaults is refused with one line, since the sites would refuse it.

When the coordinator stops after a checkpointed round (``flwr stop RUN_ID``, SIGINT or SIGTERM to its
process, a round without enough sites, a timeout), the last line of its log is that command, with the
app folder and connection left to fill in (the coordinator runs from the uploaded bundle and does not
know them), and ``OUT/summary.json`` holds it as ``failed`` (``flwr stop`` ends the run's log stream
before the coordinator's last lines reach it). The line is written by a Flower exit handler, which
runs after Flower's own exit message.
"""

from __future__ import annotations

import json
import logging
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedcore.errors import ConfigError
from fedcore.flower.protocol import ServerSettings

__all__ = ["RUN_SETTINGS", "continue_command", "continue_on_stop", "deployment_settings", "stop_line"]

log = logging.getLogger("fedcore")

RUN_SETTINGS = "deployment.json"
_KEYS = ("job", "set", "rounds", "seed")  # the run config keys that make the job (and its digest)


def continue_command(out: Path) -> str:
    """The command that continues the job checkpointed in ``out``."""
    return f"flwr run APP_DIR CONNECTION --stream --run-config \"resume='{out}'\""


def _app_defaults(app_dir: Path) -> dict[str, Any]:
    try:
        with (app_dir / "pyproject.toml").open("rb") as fh:
            table = tomllib.load(fh)
        return dict(table["tool"]["flwr"]["app"]["config"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return {}


def _recorded(out: Path) -> dict[str, Any] | None:
    path = out / RUN_SETTINGS
    if not path.is_file():
        return None  # a job from before fedcore kept the record: job= and set= must be given again
    try:
        body = json.loads(path.read_text())
        return {k: body[k] for k in _KEYS if k in body}
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"{path} is unreadable ({err}); resume with job= and set= as first given") from err


def _resumed_config(app_dir: Path, run_config: dict[str, Any], out: Path) -> dict[str, Any]:
    """The run config for ``resume=OUT``: the recorded job settings, once the given ones agree."""
    recorded = _recorded(out)
    if recorded is None:
        return run_config
    defaults = _app_defaults(app_dir)
    clash = [
        f"{k}={run_config[k]!r} (recorded: {recorded.get(k)!r})"
        for k in _KEYS
        if k in run_config and run_config[k] not in (recorded.get(k), defaults.get(k))
    ]
    if clash:
        raise ConfigError(
            f"resume='{out}' continues the job recorded in {out / RUN_SETTINGS}; the run config asks "
            f"{', '.join(clash)}. Drop those keys to continue it, or start a new job with a new out-dir"
        )
    kept = {k: v for k, v in run_config.items() if k not in _KEYS}
    return {**kept, **recorded}


def deployment_settings(app_dir: Path, run_config: dict[str, Any]) -> ServerSettings:
    """The coordinator's settings from ``flwr run``'s run config, recorded in ``OUT/deployment.json``
    for a later ``resume='OUT'`` (which takes the recorded job settings)."""
    _show_log()
    resume = str(run_config.get("resume", "")).strip()
    config = _resumed_config(app_dir, run_config, Path(resume)) if resume else run_config
    settings = ServerSettings.from_run_config(app_dir, config)
    if settings.out_dir is not None and not resume:
        settings.out_dir.mkdir(parents=True, exist_ok=True)
        record = {k: config[k] for k in _KEYS if k in config}
        (settings.out_dir / RUN_SETTINGS).write_text(json.dumps(record, indent=1))
    return settings


def _show_log() -> None:
    """fedcore's coordinator lines (sites missing from a round, rejected replies, a site rejoining) in
    the run's log, formatted as Flower's: ``flwr run --stream`` and ``flwr log`` show them."""
    from flwr.supercore.logger import console_handler

    fedcore_log = logging.getLogger("fedcore")
    if console_handler not in fedcore_log.handlers:
        fedcore_log.addHandler(console_handler)
    fedcore_log.setLevel(logging.INFO)
    fedcore_log.propagate = False


def stop_line(out: Path, *, since: float | None = None, why: BaseException | None = None) -> str:
    """What to print when the coordinator of ``out`` stops early (``why``, when known): the continue
    command when ``out`` holds a checkpoint of this job (written after ``since``, when given), else
    that nothing can be continued."""
    from fedcore.flower.checkpoint import checkpoint_path, load_checkpoint

    path = checkpoint_path(out)
    if not path.is_file() or (since is not None and path.stat().st_mtime < since):
        reason = f" ({' '.join(str(why).split())[:300]})" if why is not None and str(why) else ""
        return f"fedcore: the job stopped before a round was checkpointed in {out}{reason}; run it again"
    try:
        ckpt = load_checkpoint(out)
    except ConfigError as err:
        return f"fedcore: the job stopped; its checkpoint cannot be read ({err})"
    return (
        f"fedcore: job {ckpt.request.job_id} stopped after round {ckpt.round} of {ckpt.request.spec.rounds}; "
        f"the sites keep its plan. Continue it with: {continue_command(out)}"
    )


@contextmanager
def continue_on_stop(settings: ServerSettings) -> Iterator[None]:
    """Around a deployed job: if it does not end normally (a signal, ``flwr stop``, an error), Flower's
    exit prints :func:`stop_line` as the last line of the run's log."""
    from flwr.supercore.exit.exit_handler import add_exit_handler

    out = settings.out_dir
    if out is None:
        yield
        return
    since = None if settings.resume is not None else time.time()
    ended, why = [False], [None]  # type: list[bool], list[BaseException | None]

    def say() -> None:
        if not ended[0]:
            line = stop_line(out, since=since, why=why[0])
            log.warning("%s", line)
            # `flwr stop` ends the run's log stream before these last lines reach it: keep the line
            # where `fedcore run` keeps a failed run's, in OUT/summary.json
            (out / "summary.json").write_text(json.dumps({"app": str(out), "failed": line}, indent=2))

    add_exit_handler(say)  # LIFO: runs before Flower's own handler stops the log upload
    try:
        yield
    except BaseException as err:  # Flower's exit (and so say()) comes after this
        why[0] = err
        raise
    ended[0] = True
