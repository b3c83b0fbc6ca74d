"""An app on this machine: its files, its data preparation, and its sites' state for a simulation.

``load_app`` reads a Flower app directory (site files, default job, prepare hook); ``run_prepare``
runs the app's own data preparation; ``site_states`` and ``simulation_keys`` make the run
directory's site folders and, under HE, the one key ceremony. Shared by the training runner and
the statistics harness.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcore.config import SiteConfig, read_toml
from fedcore.errors import ConfigError, SchemaError
from fedcore.plugins import app_hooks, import_app_module, load_plugins

__all__ = [
    "AppSpec",
    "check_baseline_drop",
    "check_sites_agree",
    "load_app",
    "run_prepare",
    "simulation_keys",
    "site_states",
    "with_sites",
]


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
    hooks = app_hooks(root)
    load_plugins(root)  # an app's aggregators and mechanisms are known before its jobs are read
    return AppSpec(
        root, tuple(root / s for s in sites), str(run_cfg.get("job", "jobs/default.toml")), hooks.prepare
    )


def run_prepare(
    app: AppSpec, seed: int | None = None, statistics: Path | None = None, data: str | None = None
) -> None:
    """Run the app's own data preparation (e.g. generating synthetic site files) if it has one.

    The hook is called as ``hook(app_dir)``, with ``seed=seed`` when it has a ``seed`` parameter (a
    simulated data set drawn from the job's seed), with ``data=NAME`` (the job's ``[prepare] data``:
    which data set the job needs) when there is one, and with ``statistics=PATH`` (the
    ``statistics.json`` of the job's ``[prepare] statistics`` batch) when there is one.
    """
    if app.prepare is None:
        if statistics is not None or data is not None:
            key = "statistics" if statistics is not None else "data"
            raise ConfigError(
                f"the job's [prepare] {key} needs a prepare hook to use it: "
                f"{app.root / 'pyproject.toml'} has no [tool.fedcore] prepare"
            )
        return
    module, _, func = app.prepare.partition(":")
    hook = getattr(import_app_module(app.root, module), func, None) if func else None
    if hook is None:
        raise ConfigError(
            f"{app.root / 'pyproject.toml'}: [tool.fedcore] prepare = {app.prepare!r} "
            "must name module:function of a file in the app directory"
        )
    params = inspect.signature(hook).parameters
    kwargs: dict[str, Any] = {"seed": seed} if seed is not None and "seed" in params else {}
    if data is not None:
        if "data" not in params:
            raise ConfigError(
                f"{app.prepare}: the job's [prepare] data = {data!r} needs a prepare hook with a `data` "
                "parameter (the name of the data set the job needs)"
            )
        kwargs["data"] = data
    if statistics is not None:
        if "statistics" not in params:
            raise ConfigError(
                f"{app.prepare}: the job's [prepare] statistics needs a prepare hook with a `statistics` "
                "parameter (the path of the released statistics.json)"
            )
        kwargs["statistics"] = statistics
    hook(app.root, **kwargs)


def check_sites_agree(sites: Sequence[SiteConfig]) -> None:
    """Raise ``SchemaError`` naming the odd site if the sites' schemas differ."""

    def signature(site: SiteConfig) -> str:  # what clients.runtime.schema_fingerprint hashes
        return json.dumps(site.schema_signature(), default=str)

    ref = sites[0]
    for s in sites[1:]:
        if signature(s) != signature(ref):
            mine = [c.signature for c in s.feature_columns]
            theirs = [c.signature for c in ref.feature_columns]
            diff = sorted(set(map(str, mine)) ^ set(map(str, theirs)))
            raise SchemaError(
                f"site {s.name!r} ({s.path}) has a schema that differs from site {ref.name!r} "
                f"({ref.path}): label {s.label!r} vs {ref.label!r}, differing columns {diff}. "
                "All sites must declare the same label, feature columns, types, levels and indicate_missing"
            )


def with_sites(app: AppSpec, folder: Path) -> AppSpec:
    """``app`` simulating the site files in ``folder`` (a job's ``[prepare] sites``)."""
    files = tuple(sorted(folder.glob("*.toml"))) if folder.is_dir() else ()
    if not files:
        raise ConfigError(f"[prepare] sites: {folder} is not a folder of site files (*.toml)")
    return dataclasses.replace(app, sites=files)


def check_baseline_drop(drop: Sequence[str], sites: Sequence[SiteConfig], job_file: Path) -> None:
    """``[baselines] drop`` names feature columns of every site (checked before Flower starts)."""
    for site in sites:
        features = [c.name for c in site.feature_columns]
        unknown = [d for d in drop if d not in features]
        if unknown:
            raise ConfigError(
                f"{job_file}: [baselines] drop names {unknown}, which are not feature columns of site "
                f"{site.name!r} ({site.path}); its feature columns: {features}"
            )


def site_states(sites: Sequence[SiteConfig], out: Path, state: Path | None) -> Path:
    """Where the simulated sites keep their state: new in ``out/sites`` (created here, explicitly),
    or an earlier run's ``state`` folder, whose ledgers must exist."""
    from fedcore.site.guard import init_site_state, state_paths  # the site runtime: torch, dp_accounting

    if state is None:
        for site in sites:
            init_site_state(site, out / "sites")
        return out / "sites"
    missing = [s.name for s in sites if not state_paths(s, state).ledger.is_file()]
    if missing:
        raise ConfigError(
            f"--state {state}: no ledger for {', '.join(missing)}; give an earlier run's sites/ folder "
            "(e.g. runs/NAME/sites), or leave --state out to start new sites"
        )
    return state


def simulation_keys(needed: bool, out: Path, sites: Sequence[SiteConfig], states: Path) -> Path | None:
    """HE in a simulation (``needed``: HE on and the job names no public key): one key ceremony; the
    public context goes to the coordinator's folder, a copy of the secret one into each site's own
    state folder (never the coordinator's) unless its site file names its secret key. Sites kept
    from an earlier run (``--state``) keep their key set: its public context is the coordinator's.

    A new key set's ``max_sites`` is the number of sites rounded up to a power of two (a sum never
    holds more updates than there are sites); a kept key set too small for the sites is refused
    here, before Flower starts."""
    from fedcore.site.guard import state_paths  # the site runtime: torch, dp_accounting

    if not needed:
        return None
    from fedcore.he.keys import generate_keyset, load_secret_context, save_public, save_secret
    from fedcore.he.params import check_max_sites, params_for_sites

    kept = [p for s in sites if (p := state_paths(s, states).he_secret_key).is_file()]
    if kept:
        keyset = load_secret_context(kept[0])
        check_max_sites(
            keyset.params, len(sites), keyset_id=keyset.keyset_id, who=f"the key set in {kept[0]}"
        )
    else:
        keyset = generate_keyset(params_for_sites(1 << (len(sites) - 1).bit_length()))
    for site in sites:
        path = state_paths(site, states).he_secret_key
        if site.policy.he_secret_key is None and not path.exists():
            save_secret(keyset, path)
    public = out / "coordinator" / "public.ctx"
    save_public(keyset, public)
    return public
