"""Writing the app ``fedcore init`` planned: site files, jobs, ``pyproject.toml``, Flower components."""

from __future__ import annotations

import csv
import io
import re
import secrets
import shutil
import textwrap
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcore.appinit.infer import Column, LabelRule, Table
from fedcore.errors import ConfigError

SCALING_WARNING = (
    "center/scale of the numeric features were computed from {data} itself (mean and standard "
    "deviation of all its rows, 3 significant digits). Fine for a simulation; before a real "
    "federation runs DP, replace them in every site file with public reference values: constants "
    "derived from private rows leak them."
)
BOUNDS_NOTE = (
    "bounds (what statistics clamp values to) are {data}'s range rounded outward to round numbers: a "
    "proposal. They are each site's decision: bounds taken straight from private data leak through "
    "every statistic that uses them, so keep them coarse and public (a unit's plausible range)."
)
# The default job: local Adam (lr 0.01, batch 32) rather than the former local SGD (lr 0.05, batch 16):
# benchmarks/init_defaults.py (heart disease by hospital, German credit by housing, 10 resampled
# splits) found Adam at least alone on average at 6 of the 7 sites (Cleveland -0.017), SGD at 3
# (Cleveland, Hungarian and both German `own` and `for_free` below alone); the five banks gain under
# Adam too. docs/benchmarks.md, benchmarks/results/init_defaults.json.
DEFAULT_SCHEDULE = (10, 50, 32, 0.01, "adam")  # rounds, local steps, batch size, lr, optimizer
DP_ROUNDS, DP_STEPS, DP_MAX_BATCH, DP_LR = 10, 50, 32, 0.1


def _str(s: str) -> str:
    """A TOML basic string; quotes, backslashes and unprintable characters as unicode escapes."""
    return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\U{ord(c):08x}" for c in s) + '"'


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _str(name)


def _toml(v: Any) -> str:
    if isinstance(v, str):
        return _str(v)
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_toml(x)}" for k, x in v.items()) + " }"
    if isinstance(v, tuple | list):
        return "[" + ", ".join(map(_toml, v)) + "]"
    return re.sub(r"e(-?)\+?0*(\d)", r"e\1\2", repr(v))  # a finite number; 1e-05 -> 1e-5


def _comment(text: str) -> list[str]:
    return [f"# {ln}" for para in text.splitlines() for ln in textwrap.wrap(para, 100)]


def _render(tables: Mapping[str, Mapping[str, Any]], notes: Mapping[str, str], head: str) -> str:
    """TOML text, a ``[name]`` per table: ``notes[name]`` above it, ``notes[name.key]`` after a value."""
    lines = _comment(head)
    for name, table in tables.items():
        lines += ["", *_comment(notes.get(name, "")), f"[{name}]"]
        for k, v in table.items():
            note = " ".join(notes.get(f"{name}.{k}", "").split())
            lines.append(f"{_key(k)} = {_toml(v)}" + (f"  # {note}" if note else ""))
    text = "\n".join(lines) + "\n"
    tomllib.loads(text)  # a bug here must never write a broken app
    return text


@dataclass(frozen=True)
class AppPlan:
    """What the app's files are rendered from."""

    data: str  # the source file's name, for comments
    dataset: str
    project: str
    columns: tuple[Column, ...]
    label: str
    rule: LabelRule
    sites: Mapping[str, Sequence[int]]
    test_fraction: float
    seed: int
    dp_batch: int


def _site_file(app: AppPlan, site: str) -> str:
    rule, bar = app.rule, "-" * 98
    positive: dict[str, Any] = {"positive": rule.positive}
    if rule.positive_above is not None:
        positive = {"positive_above": rule.positive_above}
    privacy = {"budget_epsilon": 10.0, "budget_delta": 1e-5, "max_epsilon_per_job": 8.0}
    tables: dict[str, dict[str, Any]] = {
        "site": {"name": site},
        "data": {"path": f"../data/{site}.csv", "header": True, "dataset": app.dataset},
        "schema": {"label": app.label, **positive},
        "schema.columns": {c.name: c.spec() for c in app.columns},
        "split": {"test_fraction": app.test_fraction, "seed": app.seed},
        "privacy": {**privacy, "evaluation": "withhold", "dataset_size": "dp"},
    }
    notes = {f"schema.columns.{c.name}": f"review: {c.note}" for c in app.columns}
    notes |= {f"schema.{k}": f"review: {rule.note}" for k in ("positive", "positive_above")}
    if any(c.center is not None for c in app.columns):
        warning = (
            f"WARNING: {SCALING_WARNING.format(data=app.data)}\nReview: {BOUNDS_NOTE.format(data=app.data)}"
        )
        notes["schema.columns"] = f"{bar}\n{warning}\n{bar}"
    notes["privacy"] = (
        "The site's budget over all jobs it serves (PLD-composed) and its cap per job. Under DP it "
        "withholds its evaluation metrics and releases its training-set size once, with noise."
    )
    head = (
        f"Site file written by `fedcore init` from {app.data}: simulated site {site}, "
        f"{len(app.sites[site])} rows. Check each line marked review; a real site points [data] path "
        "at its own CSV."
    )
    return _render(tables, notes, head)


def _job(
    app: AppPlan,
    name: str,
    what: str,
    privacy: Mapping[str, Any],
    schedule: tuple[int, int, int, float, str],
) -> str:
    rounds, local_steps, batch, lr, optimizer = schedule
    steps = rounds * local_steps  # what a site computes in the job
    tables: dict[str, Mapping[str, Any]] = {
        "job": {"name": name, "rounds": rounds, "seed": app.seed, "min_sites": len(app.sites)},
        "model": {"name": "logreg"},
        "train": {"local_steps": local_steps, "batch_size": batch, "optimizer": optimizer, "lr": lr},
        "aggregator": {"name": "fedavg"},
        "evaluate": {"metric": "auc"},
        **privacy,
        "baselines": {"optimizer": "adam", "lr": 0.01, "batch_size": 32, "steps": steps},
    }
    notes = {
        "job.min_sites": "a round needs every site's update",
        "evaluate.metric": "what the report plots per round and compares first",
        "baselines": (
            "Simulation only, for comparison: each site alone (as many steps as it takes in the job: the "
            "same compute), and all rows pooled (that many per site)."
        ),
    }
    return _render(tables, notes, f"{what} Written by `fedcore init`.")


def _pyproject(app: AppPlan) -> str:
    description = f"A fedcore simulation app written by `fedcore init` from {app.data}"
    sites = ",".join(f"sites/{s}.toml" for s in app.sites)
    components = {"serverapp": "fedcore_app:server_app", "clientapp": "fedcore_app:client_app"}
    tables: dict[str, dict[str, Any]] = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": app.project, "version": "0.1.0", "description": description, "dependencies": []},
        "tool.hatch.build.targets.wheel": {"packages": ["."]},
        "tool.flwr.app": {"publisher": "fedcore"},
        "tool.flwr.app.components": components,
        "tool.flwr.app.config": {
            "job": "jobs/default.toml",
            "sites": sites,
            "set": "",
            "out-dir": "",
            "resume": "",
        },
    }
    why = "fedcore (and torch) come from the environment the SuperLink/SuperNodes run in; keep this minimal"
    return _render(tables, {"project.dependencies": why}, "A Flower app written by `fedcore init`.")


_FLOWER_APP = '''"""Flower components of this app (see pyproject.toml [tool.flwr.app.components])."""

from pathlib import Path

from fedcore.flower import make_client_app, make_server_app

APP_DIR = Path(__file__).resolve().parent

server_app = make_server_app(app_dir=APP_DIR)
client_app = make_client_app(app_dir=APP_DIR)
'''


def _csv(table: Table, rows: Sequence[int]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([table.header, *(table.rows[i] for i in rows)])
    return buf.getvalue()


def render_app(app: AppPlan, table: Table) -> dict[str, str]:
    """Every file of the app, by its path relative to the app directory."""
    dp = {"privacy.dpsgd": {"epsilon": 3.0, "delta": 1e-5, "max_grad_norm": 1.0}}
    dp_what = (
        f"The default job with DP-SGD at every site. Batch {app.dp_batch}: at most a quarter of the "
        "smallest site's training rows, and under them by 4 std of the noisy size a site releases "
        f"under DP. lr {DP_LR:g}: clipped gradients are smaller."
    )
    he_what = "The default job under homomorphic encryption."
    return {
        "pyproject.toml": _pyproject(app),
        "fedcore_app.py": _FLOWER_APP,
        "jobs/default.toml": _job(
            app, "default", "Logistic regression, FedAvg, local Adam.", {}, DEFAULT_SCHEDULE
        ),
        "jobs/dp.toml": _job(app, "dp", dp_what, dp, (DP_ROUNDS, DP_STEPS, app.dp_batch, DP_LR, "sgd")),
        "jobs/he.toml": _job(app, "he", he_what, {"privacy.he": {"enabled": True}}, DEFAULT_SCHEDULE),
        **{f"sites/{s}.toml": _site_file(app, s) for s in app.sites},
        **{f"data/{s}.csv": _csv(table, rows) for s, rows in app.sites.items()},
    }


def write_app(out: Path, files: Mapping[str, str]) -> tuple[Path, ...]:
    """Write ``files`` into a hidden folder beside ``out``, then rename it to ``out``."""
    tmp = out.parent / f".{out.name}.init-{secrets.token_hex(4)}"
    try:
        for rel, text in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text, encoding="utf-8")
        if out.is_dir():
            out.rmdir()  # empty: checked before
        tmp.rename(out)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"cannot write the app to {out} ({err}); choose another --out") from err
    return tuple(out / rel for rel in files)
