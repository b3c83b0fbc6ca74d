"""``fedcore run APP``: simulate every site of an app on this machine and write a run directory.

Everything is validated before Flower starts, so a bad site or job file fails in a second with a
clear message instead of after Ray has booted.
"""

from __future__ import annotations

import inspect
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from fedcore.baselines import local_and_pooled, local_only_private, mean_metrics, membership_attack
from fedcore.clients.site import schema_fingerprint
from fedcore.clients.trainer import TrainConfig
from fedcore.config import JobConfig, SiteConfig, load_job, load_site, read_toml
from fedcore.data import prepare_site
from fedcore.errors import ConfigError, SchemaError

__all__ = ["AppSpec", "load_app", "run_app", "run_seeds"]

_MEAN_METRICS = ("accuracy", "auprc", "cost", "card_precision_top_k")
"""Per-site metrics whose mean over sites the summary also gives (when the sites report them)."""


@dataclass(frozen=True)
class AppSpec:
    """A Flower app directory with fedcore job and site files."""

    root: Path
    sites: tuple[Path, ...]
    default_job: str
    prepare: str | None = None  # "module:function" in the app dir, run before the sites load

    def job_file(self, name: str | None) -> Path:
        if name is None:
            return self.root / self.default_job
        candidate = Path(name)
        if candidate.suffix == ".toml" and candidate.is_file():
            return candidate
        path = self.root / "jobs" / f"{name}.toml"
        if not path.is_file():
            known = sorted(p.stem for p in (self.root / "jobs").glob("*.toml"))
            raise ConfigError(f"no job {name!r} in {self.root / 'jobs'}; known jobs: {known}")
        return path


def load_app(root: Path | str) -> AppSpec:
    root = Path(root).resolve()
    cfg = read_toml(root / "pyproject.toml").get("tool", {}).get("flwr", {}).get("app", {})
    run_cfg = cfg.get("config", {})
    sites = [s.strip() for s in str(run_cfg.get("sites", "")).split(",") if s.strip()]
    if not sites:
        raise ConfigError(f"{root / 'pyproject.toml'}: [tool.flwr.app.config] sites lists no site files")
    prepare = read_toml(root / "pyproject.toml").get("tool", {}).get("fedcore", {}).get("prepare")
    return AppSpec(
        root, tuple(root / s for s in sites), str(run_cfg.get("job", "jobs/default.toml")), prepare
    )


def run_prepare(app: AppSpec, seed: int | None = None) -> None:
    """Run the app's own data preparation (e.g. generating synthetic site files) if it has one.

    The hook is called as ``hook(app_dir)``, or ``hook(app_dir, seed=seed)`` when it has a ``seed``
    parameter (a simulated data set drawn from the job's seed).
    """
    if app.prepare is None:
        return
    import importlib.util

    module, _, func = app.prepare.partition(":")
    spec = importlib.util.spec_from_file_location(f"_fedcore_app_{module}", app.root / f"{module}.py")
    if spec is None or spec.loader is None or not func:
        raise ConfigError(
            f"{app.root / 'pyproject.toml'}: [tool.fedcore] prepare = {app.prepare!r} "
            "must name module:function of a file in the app directory"
        )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses in the hook look their module up there
    spec.loader.exec_module(mod)
    hook = getattr(mod, func)
    if seed is not None and "seed" in inspect.signature(hook).parameters:
        hook(app.root, seed=seed)
    else:
        hook(app.root)


def check_sites_agree(sites: Sequence[SiteConfig]) -> None:
    """Raise ``SchemaError`` naming the odd site if the sites' schemas differ."""
    ref = sites[0]
    for s in sites[1:]:
        if schema_fingerprint(s) != schema_fingerprint(ref):
            mine = [(c.name, c.type, c.levels) for c in s.feature_columns]
            theirs = [(c.name, c.type, c.levels) for c in ref.feature_columns]
            diff = sorted(set(map(str, mine)) ^ set(map(str, theirs)))
            raise SchemaError(
                f"site {s.name!r} ({s.path}) has a schema that differs from site {ref.name!r} "
                f"({ref.path}): label {s.label!r} vs {ref.label!r}, differing columns {diff}. "
                "All sites must declare the same label, feature columns, types and levels"
            )


def _overrides(rounds: int | None, seed: int | None, sets: Sequence[str]) -> list[str]:
    out = list(sets)
    if rounds is not None:
        out.append(f"job.rounds={rounds}")
    if seed is not None:
        out.append(f"job.seed={seed}")
    return out


def run_app(
    root: Path | str,
    *,
    job: str | None = None,
    out_dir: Path | None = None,
    rounds: int | None = None,
    seed: int | None = None,
    sets: Sequence[str] = (),
    baselines: bool = True,
    on_round: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Validate, simulate, compute baselines, write the run directory; return the summary."""
    from fedcore.flower.simulation import simulate
    from fedcore.report import write_report

    app = load_app(root)
    job_file = app.job_file(job)
    overrides = _overrides(rounds, seed, sets)
    job_cfg = load_job(job_file, overrides)
    run_prepare(app, job_cfg.seed)
    site_cfgs = [load_site(p) for p in app.sites]
    check_sites_agree(site_cfgs)
    datas = [prepare_site(s) for s in site_cfgs]  # fails fast on bad data
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out_dir) if out_dir else Path("runs") / f"{app.root.name}-{job_cfg.name}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    he_keys = _simulation_keys(job_cfg, out)
    t0 = time.perf_counter()
    simulate(
        app.root,
        job_file,
        list(app.sites),
        overrides=overrides,
        out_dir=out,
        on_round=on_round,
        he_keys=he_keys,
    )
    wall = time.perf_counter() - t0
    if he_keys is not None:  # the coordinator has no plaintext model: keep the first site's copy
        shutil.copyfile(out / "sites" / f"{site_cfgs[0].name}.model.npz", out / "model.npz")
    summary = _summary(job_cfg, out, wall)
    model = np.load(out / "model.npz")
    mia = membership_attack([model[k] for k in model.files], datas, model_spec=job_cfg.section("model"))
    for name, auc in mia.items():
        summary["privacy"]["sites"].setdefault(name, {})["membership_attack_auc"] = auc
    summary["privacy"]["mean_membership_attack_auc"] = float(np.mean(list(mia.values())))
    if baselines:
        _add_baselines(summary, job_cfg, datas)
        _add_private_local_only(summary, job_cfg, app.sites)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(out, summary)
    return summary


def run_seeds(
    root: Path | str,
    seeds: Sequence[int],
    *,
    out_dir: Path | None = None,
    job: str | None = None,
    on_seed: Callable[[int], None] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """``run_app`` once per seed into ``out_dir/seed-<s>``; ``out_dir/summary.json`` holds the mean.

    Every number of the per-seed summaries (top level and per site) is averaged over the seeds; the
    standard deviations sit under ``sd_over_seeds`` with the same keys, and ``per_seed`` names each
    seed's run directory. Text fields (``privacy`` included) are the first seed's. With a prepare
    hook that takes ``seed`` (see ``run_prepare``) the seed also draws the app's data.
    """
    from fedcore.report import write_report

    if len(seeds) < 1 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds needs distinct seeds, got {list(seeds)}")
    app = load_app(root)
    name = load_job(app.job_file(job), list(kwargs.get("sets", ()))).name
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out_dir) if out_dir else Path("runs") / f"{app.root.name}-{name}-seeds-{stamp}"
    runs = []
    for s in seeds:
        if on_seed is not None:
            on_seed(s)
        runs.append(run_app(root, job=job, out_dir=out / f"seed-{s}", seed=s, **kwargs))
    summary = {
        **{k: v for k, v in runs[0].items() if not _is_number(v) and k != "sites"},
        **_average(runs, np.mean),
        "app": str(out),
        "seed": ", ".join(map(str, seeds)),
        "seeds": list(seeds),
        "sd_over_seeds": _average(runs, np.std),
        "per_seed": {str(s): str(out / f"seed-{s}") for s in seeds},
    }
    summary["per_round_mean_accuracy"] = list(
        np.mean([r["per_round_mean_accuracy"] for r in runs], axis=0).tolist()
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(out, summary)
    return summary


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _average(runs: Sequence[dict[str, Any]], reduce: Callable[[Any], Any]) -> dict[str, Any]:
    """``reduce`` over the runs of every number found in all of them (top level and per site)."""

    def over(values: Sequence[Any]) -> Any:
        same = all(v == values[0] for v in values)
        return values[0] if same and reduce is np.mean else float(reduce(values))

    def numbers(dicts: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {
            k: over([d[k] for d in dicts])
            for k, v in dicts[0].items()
            if _is_number(v) and all(_is_number(d.get(k)) for d in dicts)
        }

    sites = {name: numbers([r["sites"].get(name, {}) for r in runs]) for name in runs[0].get("sites", {})}
    return {**numbers(runs), "sites": sites}


def _simulation_keys(job: JobConfig, out: Path) -> Path | None:
    """HE in a simulation: one key ceremony into the run directory, unless the job names a key."""
    he = dict(job.raw.get("privacy", {}).get("he", {}))
    if not he.get("enabled", False) or "public_key" in he:
        return None
    from fedcore.he.keys import init_keys

    keys = out / "keys"
    if not (keys / "public.ctx").exists():
        init_keys(keys)
    return keys


def _summary(job: JobConfig, out: Path, wall: float) -> dict[str, Any]:
    metrics = json.loads((out / "metrics.json").read_text())
    final = metrics["rounds"][-1]["evaluate"]
    return {
        "app": str(out),
        "job": job.name,
        "aggregator": job.section("aggregator").get("name"),
        "rounds": job.rounds,
        "seed": job.seed,
        "wall_seconds": round(wall, 3),
        **{f"mean_site_{k}": v for k, v in mean_metrics(final).items()},
        "sites": {name: {k: v for k, v in m.items() if k != "n"} for name, m in final.items()},
        "per_round_mean_accuracy": [mean_metrics(r["evaluate"]).get("accuracy") for r in metrics["rounds"]],
        "job_id": metrics.get("job_id"),
        "privacy": _privacy_summary(metrics),
        "rejected": {str(r["round"]): r["rejected"] for r in metrics["rounds"] if r["rejected"]},
    }


def _privacy_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Per site: epsilon and delta this job cost, its budget and what remains (the sites' reports),
    and which parts of the job were protected how."""
    keys = ("epsilon", "delta", "budget_epsilon", "remaining_epsilon")
    sites: dict[str, dict[str, float]] = {}
    he_bytes: list[float] = []
    for r in metrics["rounds"]:
        for name, m in r["train"].items():
            sites[name] = {k: m[k] for k in keys if k in m}
            he_bytes += [m["ciphertext_bytes"]] if "ciphertext_bytes" in m else []
    priv = dict(metrics["job"].get("privacy", {}))
    he_on = bool(dict(priv.get("he", {})).get("enabled", False))
    out: dict[str, Any] = {
        "sites": sites,
        "dpsgd": priv.get("dpsgd"),
        "client_dp": priv.get("client_dp"),
        "he": he_on,
        "encrypted": (
            "every site's model update, and the aggregate the coordinator computes and sends back "
            "(the coordinator holds only the public context; sites decrypt and apply the step)"
            if he_on
            else "nothing: updates travel in plaintext (protected by TLS in deployment)"
        ),
    }
    if priv.get("dpsgd") or priv.get("client_dp"):
        out["not_accounted"] = (
            "per-round evaluation metrics (accuracy, loss, AUC, AUPRC) on each site's test rows are "
            "released to the coordinator without noise and are not charged to the ledger; training "
            "losses are withheld under DP"
        )
    if he_bytes:
        out["he_upload_bytes_per_site_round"] = sum(he_bytes) / len(he_bytes)
    return out


def _add_private_local_only(summary: dict[str, Any], job: JobConfig, site_files: Sequence[Path]) -> None:
    """``local_only_dp_own_<metric>`` per site and its mean, for a job with ``[privacy.dpsgd]``."""
    scores = local_only_private(job, site_files)
    for name, vals in scores.items():
        summary["sites"].setdefault(name, {}).update({f"local_only_dp_own_{k}": v for k, v in vals.items()})
    for metric in _MEAN_METRICS:
        per_site = [v[metric] for v in scores.values() if metric in v]
        if per_site:
            summary[f"mean_local_only_dp_own_{metric}"] = float(np.mean(per_site))


def _add_baselines(summary: dict[str, Any], job: JobConfig, datas: Sequence[Any]) -> None:
    cfg = job.section("baselines") or {**job.section("train"), "epochs": 10}
    base = local_and_pooled(
        datas,
        model_spec=job.section("model"),
        cfg=TrainConfig.from_mapping(cfg),
        epochs=int(cfg.get("epochs", 10)),
        seed=job.seed,
        evaluate=job.section("evaluate"),
    )
    for name, vals in base["sites"].items():
        pooled_here = {f"pooled_own_{k}": v for k, v in base["pooled_per_site"][name].items() if k != "n"}
        summary["sites"].setdefault(name, {}).update({**vals, **pooled_here})
    summary.update({k: v for k, v in base.items() if k.startswith("pooled_") and k != "pooled_per_site"})
    for metric in _MEAN_METRICS:
        vals = [v[f"local_only_{metric}"] for v in base["sites"].values() if f"local_only_{metric}" in v]
        if vals:
            summary[f"mean_local_only_{metric}"] = float(np.mean(vals))
