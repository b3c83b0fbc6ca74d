"""A job's [prepare] data reaches the app's prepare hook, strictly; [baselines] drop is checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcore.config import load_job, load_site
from fedcore.errors import ConfigError
from fedcore.harness.app import AppSpec, check_baseline_drop, run_prepare

FINANCE = Path(__file__).resolve().parents[1] / "examples" / "finance"


def _app(tmp_path: Path, hook: str) -> AppSpec:
    (tmp_path / "prep_hook.py").write_text(hook)
    return AppSpec(tmp_path, (), "jobs/default.toml", "prep_hook:prepare")


def test_the_hook_gets_the_jobs_data_name_and_seed(tmp_path: Path) -> None:
    app = _app(
        tmp_path,
        "from pathlib import Path\n"
        "def prepare(app_dir, seed=None, data=None):\n"
        "    (Path(app_dir) / 'got.txt').write_text(f'{seed} {data}')\n",
    )
    run_prepare(app, 7, data="consortium")
    assert (tmp_path / "got.txt").read_text() == "7 consortium"
    run_prepare(app, 8)
    assert (tmp_path / "got.txt").read_text() == "8 None"  # no [prepare] data: the hook's default


def test_a_data_name_for_a_hook_without_a_data_parameter_is_refused(tmp_path: Path) -> None:
    app = _app(tmp_path, "def prepare(app_dir, seed=None):\n    raise AssertionError('must not run')\n")
    with pytest.raises(ConfigError, match="`data` parameter"):
        run_prepare(app, 1, data="consortium")
    bare = AppSpec(tmp_path, (), "jobs/default.toml", None)
    with pytest.raises(ConfigError, match=r"\[prepare\] data needs a prepare hook"):
        run_prepare(bare, 1, data="consortium")


def test_prepare_data_is_a_string_and_unknown_prepare_keys_are_refused(tmp_path: Path) -> None:
    base = (FINANCE / "jobs" / "consortium.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(base.replace('data = "consortium"', "data = 3"))
    with pytest.raises(ConfigError, match="data"):
        load_job(bad)
    bad.write_text(base.replace('data = "consortium"', 'dat = "consortium"'))
    with pytest.raises(ConfigError, match="dat"):
        load_job(bad)


def test_baselines_drop_must_name_feature_columns_of_every_site() -> None:
    sites = [load_site(FINANCE / "sites-consortium" / f"bank_{b}.toml") for b in range(5)]
    check_baseline_drop(("consortium_frauds_7d",), sites, Path("job.toml"))
    with pytest.raises(ConfigError, match="not feature columns"):
        check_baseline_drop(("consortium_frauds_28d",), sites, Path("job.toml"))  # only the DP sites have it
    with pytest.raises(ConfigError, match="not feature columns"):
        check_baseline_drop(("customer_id",), sites, Path("job.toml"))  # an identifier is no feature
