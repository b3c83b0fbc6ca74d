"""Job and site files parse strictly: every unknown key is an error with a suggestion, every value is
checked at load, all problems are reported at once, and --set overrides go through the same checks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fedcore.cli import main
from fedcore.config import apply_overrides, load_job, load_site
from fedcore.errors import ConfigError

APP = Path(__file__).resolve().parents[1] / "examples" / "medical"
SHARED = APP.parents[2] / "shared"


def test_nested_overrides_reach_privacy_sections_without_touching_the_input() -> None:
    raw = {"job": {"rounds": 3}, "privacy": {"dpsgd": {"epsilon": 1.0}}}
    out = apply_overrides(raw, ["privacy.dpsgd.epsilon=0.5", "privacy.he.enabled=true", "job.rounds=7"])
    assert out["privacy"] == {"dpsgd": {"epsilon": 0.5}, "he": {"enabled": True}}
    assert out["job"]["rounds"] == 7
    assert raw["privacy"]["dpsgd"]["epsilon"] == 1.0


def test_bad_overrides_are_explained() -> None:
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        apply_overrides({}, ["rounds5"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"job": {"rounds": 3}}, ["job.rounds.x=1"])


def test_job_is_typed() -> None:
    job = load_job(APP / "jobs" / "dp.toml", ["privacy.dpsgd.epsilon=3"])
    assert job.mechanisms["dpsgd"].epsilon == 3.0 and job.mechanisms["dpsgd"].max_grad_norm == 1.1
    assert job.rounds == 15 and job.local_steps == 100 and job.train.lr == 0.002
    assert job.aggregator.name == "fedyogi" and job.aggregator.options["server_lr"] == 0.01
    assert job.he is None and job.table["privacy"]["dpsgd"]["epsilon"] == 3


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.lrr=0.1", r"\[train\]: unknown key 'lrr' \(did you mean 'lr'\?\)"),
        ("trian.lr=0.1", r"unknown key 'trian' \(did you mean 'train'\?\)"),
        ("privacy.dpsgd.epsilom=1", r"\[privacy.dpsgd\]: unknown key 'epsilom' \(did you mean 'epsilon'\?\)"),
        ("privacy.dpsgdd.epsilon=1", r"\[privacy\]: unknown key 'dpsgdd' \(did you mean 'dpsgd'\?\)"),
        ("aggregator.beta3=0.5", r"aggregator 'fedyogi' has no option 'beta3' \(did you mean 'beta2'\?\)"),
        ("model.hidden=[8]", r"model 'logreg' has no option 'hidden' \(it takes no options\)"),
        ("train.optimizer='adamw'", r"optimizer: must be one of 'sgd', 'adam', got 'adamw'"),
        ("train.lr=-0.1", r"\[train\] lr: must be > 0, got -0.1"),
        ("job.rounds=0", r"\[job\] rounds: must be >= 1, got 0"),
        ("privacy.dpsgd.epsilon=0", r"\[privacy.dpsgd\] epsilon: must be > 0, got 0"),
        ("privacy.dpsgd.delta=2", r"delta: must be < 1, got 2"),
        ("privacy.secure_noise=false", r"secure_noise: was removed"),
        ("privacy.client_dp.mode='central'", r"mode = 'central' is refused by every site"),
        ("job.rounds=2.5", r"rounds: must be an integer, got 2.5"),
    ],
)
def test_every_bad_job_value_is_refused_at_load(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_job(APP / "jobs" / "dp.toml", [override])


def test_all_problems_are_reported_at_once_with_the_file() -> None:
    with pytest.raises(ConfigError) as err:
        load_job(APP / "jobs" / "dp.toml", ["train.lrr=1", "job.rounds=0", "privacy.dpsgd.epsilon=-1"])
    text = str(err.value)
    assert text.count(str(APP / "jobs" / "dp.toml")) == 3 and "after --set" in text


def test_client_dp_without_he_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match=r"client_dp.*needs secure aggregation"):
        load_job(APP / "jobs" / "client_dp.toml", ["privacy.he.enabled=false"])


def _site(tmp_path: Path, extra: str, replace: tuple[str, str] = ("", "")) -> Path:
    text = (APP / "sites" / "cleveland.toml").read_text().replace("../../../../shared", str(SHARED))
    path = tmp_path / "site.toml"
    path.write_text(text.replace(*replace) + extra)
    return path


def test_site_policy_is_typed() -> None:
    site = load_site(APP / "sites" / "cleveland.toml")
    policy = site.policy
    assert policy.budget_epsilon == 10.0 and policy.max_epsilon_per_job == 8.0
    assert policy.ledger is None and not policy.require_he and policy.min_sites == 2
    assert policy.evaluation == "withhold" and policy.dataset_size == "dp"
    assert not site.undeclared_scaling  # every numeric feature has public center/scale


@pytest.mark.parametrize(
    ("extra", "replace", "expected"),
    [
        (
            "max_epsilon_per_jb = 1.0\n",
            ("", ""),
            r"unknown key 'max_epsilon_per_jb' \(did you mean 'max_epsilon_per_job'\?\)",
        ),
        ("", ("budget_epsilon = 10.0", "budget_epsilon = 0"), r"budget_epsilon: must be > 0, got 0"),
        (
            "",
            ('evaluation = "withhold"', 'evaluation = "sometimes"'),
            r"evaluation: must be one of 'withhold'",
        ),
        ("[privacy.dpsgd]\nepsilon = 1\nclip = 1\n", ("", ""), r"unknown key 'clip'"),
        ("", ("[split]", "[splitt]"), r"unknown key 'splitt' \(did you mean 'split'\?\)"),
        (
            "",
            ('age = { type = "numeric"', 'age = { typ = "numeric"'),
            r"schema.columns.age\]: unknown key 'typ'",
        ),
        ("", ("header = false", "header = 0"), r"header: must be true or false"),
    ],
)
def test_every_bad_site_value_is_refused_at_load(
    tmp_path: Path, extra: str, replace: tuple[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_site(_site(tmp_path, extra, replace))


def test_a_bad_setting_fails_before_flower_starts_in_one_clean_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t0 = time.perf_counter()
    assert (
        main(["run", str(APP), "--job", "dp", "--set", "train.lrr=0.1", "--quiet", "--out", str(tmp_path)])
        == 2
    )
    assert time.perf_counter() - t0 < 5.0
    err = capsys.readouterr().err
    assert "unknown key 'lrr' (did you mean 'lr'?)" in err and "Traceback" not in err
    assert not (tmp_path / "sites").exists()  # nothing was created


def test_min_sites_above_the_apps_sites_fails_before_flower_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t0 = time.perf_counter()
    assert main(["run", str(APP), "--set", "job.min_sites=5", "--quiet", "--out", str(tmp_path)]) == 2
    assert time.perf_counter() - t0 < 5.0
    assert "min_sites = 5 but the app lists 4 sites" in capsys.readouterr().err


def test_the_site_file_reference_is_written_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    from fedcore.cli.admin import site_file_doc

    assert main(["site-schema"]) == 0
    printed = capsys.readouterr().out
    assert printed == site_file_doc() == (APP.parents[1] / "docs" / "site-file.md").read_text()
    for key in ("incomplete_rows", "max_epsilon_per_job", "center", "trusted_apps", "[privacy.dpsgd]"):
        assert key in printed


@pytest.mark.parametrize(
    ("job_sets", "site_edit", "expected"),
    [
        (["train.optimizer='adamw'"], None, "optimizer: must be one of 'sgd', 'adam'"),
        (["train.lr=-0.01"], None, "lr: must be > 0, got -0.01"),
        ([], ("budget_epsilon = 10.0", "budget_epsilon = 0.0"), "budget_epsilon: must be > 0, got 0.0"),
        (["job.min_sites=9"], None, "min_sites = 9 but the app lists 4 sites"),
        (["privacy.he.enabled=true", "privacy.he.weight_scale=0"], None, "weight_scale: must be > 0"),
        ([], ("max_epsilon_per_job = 8.0", "max_epsilon_per_jb = 1.0"), "did you mean 'max_epsilon_per_job'"),
    ],
)
def test_each_bad_setting_is_refused_before_flower_starts_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    job_sets: list[str],
    site_edit: tuple[str, str] | None,
    expected: str,
) -> None:
    import shutil

    app = tmp_path / "medical"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    for f in (app / "sites").glob("*.toml"):
        text = f.read_text().replace("../../../../shared", str(SHARED))
        f.write_text(text.replace(*site_edit) if site_edit and f.stem == "va" else text)
    sets = [x for s in job_sets for x in ("--set", s)]
    t0 = time.perf_counter()
    assert main(["run", str(app), "--job", "dp", *sets, "--quiet", "--out", str(tmp_path / "run")]) == 2
    assert time.perf_counter() - t0 < 5.0
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and not (tmp_path / "run" / "sites").exists()


def test_an_unknown_key_in_the_apps_fedcore_table_is_refused(tmp_path: Path) -> None:
    import shutil

    from fedcore.harness.app import load_app

    app = tmp_path / "medical"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    pyproject = app / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("plugins = [", "plugin = ["))
    with pytest.raises(
        ConfigError, match=r"\[tool.fedcore\]: unknown key 'plugin' \(did you mean 'plugins'\?\)"
    ):
        load_app(app)
