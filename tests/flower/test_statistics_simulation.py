"""Statistics through Flower's simulation engine: one budget with training, the CLI, HE sums."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fedcore.cli import main
from fedcore.errors import PolicyError
from fedcore.harness.runner import run_app
from fedcore.harness.statistics import run_statistics_app, write_statistics_file

APP = Path(__file__).resolve().parents[2] / "examples" / "medical"
SITES = ("cleveland", "hungary", "switzerland", "va")


def _ledger(state: Path, site: str, capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    capsys.readouterr()
    assert main(["ledger", str(APP / "sites" / f"{site}.toml"), "--state-dir", str(state), "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_train_then_query_until_refusal_on_one_budget(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = run_app(APP, job="dp", out_dir=tmp_path / "train", rounds=2, baselines=False)
    state = tmp_path / "train" / "sites"
    spent = float(train["privacy"]["sites"]["cleveland"]["epsilon"]) if "privacy" in train else None
    batch = write_statistics_file(
        {
            "job": {"name": "big", "min_sites": 4},
            "query": [
                {"name": "prevalence", "stat": "proportion", "of": "num > 0", "epsilon": 2.0},
                {"name": "mean age", "stat": "mean", "column": "age", "epsilon": 2.0},
            ],
        },
        tmp_path / "big.toml",
    )
    answered = 0
    with pytest.raises(PolicyError, match="budget") as refused:
        for i in range(4):  # 10 per site: the DP job (about 1) and two batches (about 4 each) fit
            run_statistics_app(APP, batch, out_dir=tmp_path / f"q{i}", curves=False, state=state)
            answered += 1
    assert answered == 2 and "nothing was released" in str(refused.value)
    for site in SITES:
        ledger = _ledger(state, site, capsys)
        kinds = [sorted(c["released"]) for c in ledger["charges"]]
        job = [["evaluate", "train"]] * 2  # the DP job: one charge per round answered
        assert kinds == [*job, ["query"], ["query"]], (site, kinds)
        assert ledger["datasets"][0]["remaining_epsilon"] < 2.0
        assert main(["audit", "verify", str(APP / "sites" / f"{site}.toml"), "--state-dir", str(state)]) == 0
    assert spent is None or spent > 0


def test_cli_answers_one_statistic_as_json_with_intervals(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["query", str(APP), "--stat", "mean", "--column", "age", "--where", "num > 0", "--by", "sex"]
    args += ["--by-levels", "0,1", "--epsilon", "0.5", "--json", "--no-curves", "--out", str(tmp_path)]
    assert main(args) == 0
    (result,) = json.loads(capsys.readouterr().out)
    groups = {g["group"]: g for g in result["groups"]}
    assert set(groups) == {"sex = 0", "sex = 1"}
    for g in groups.values():
        assert g["low"] <= g["value"] <= g["high"] and g["epsilon"] == 0.5
    assert abs(groups["sex = 1"]["value"] - groups["sex = 1"]["exact_pooled"]) < 3.0  # years, 450 men
    assert {p["site"] for p in result["per_site"]} <= set(SITES) and result["per_site"]
    assert "own noisy answer" in result["noise"]
    assert (tmp_path / "request.toml").is_file() and (tmp_path / "report.md").is_file()


def test_cli_refuses_bad_flags_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", str(APP), "--stat", "mean", "--column", "age", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "epsilon" in err and "Traceback" not in err
    assert (
        main(
            [
                "query",
                str(APP),
                "--stat",
                "mean",
                "--column",
                "nope",
                "--epsilon",
                "1",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "'nope' is not a column" in err and "Traceback" not in err


def test_he_batch_gives_the_coordinator_only_sums(tmp_path: Path, shared_data: Path) -> None:
    body = run_statistics_app(APP, APP / "queries" / "prevalence_he.toml", out_dir=tmp_path, curves=False)
    assert body["he"] and set(body["decrypted_by"]) == {"prevalence", "prevalence by age band"}
    for result in body["results"]:
        assert result["per_site"] == [] and "under HE" in result["noise"]
        for row in result["rows"]:
            if row["value"] is not None:
                assert row["low"] <= row["value"] <= row["high"]
    overall = body["results"][0]["rows"][0]
    assert abs(overall["value"] - overall["exact_pooled"]) < 0.05


@pytest.mark.slow
def test_a_job_with_a_statistics_phase_charges_both_to_one_ledger(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """[prepare] statistics: the batch runs through Flower first (under HE), the app's prepare hook
    reads what was released, then the job trains on the same sites' ledgers."""
    app = tmp_path / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns(".fedcore", "__pycache__"))
    for f in (app / "sites").glob("*.toml"):
        f.write_text(f.read_text().replace("../../../../shared", str(shared_data.parent)))
    (app / "prepare.py").write_text(
        "import json\nfrom pathlib import Path\nfrom fedcore.analytics.released import released_histogram\n\n"
        "def prepare(app_dir, statistics=None):\n"
        "    if statistics is not None:\n"
        "        ages = released_histogram(statistics, 'ages').tolist()\n"
        "        (Path(app_dir) / 'released.json').write_text(json.dumps(ages))\n"
    )
    with (app / "pyproject.toml").open("a") as f:
        f.write('prepare = "prepare:prepare"\n')
    write_statistics_file(
        {
            "job": {"name": "ages", "min_sites": 4, "he": True},
            "query": [
                {
                    "name": "ages",
                    "stat": "histogram",
                    "column": "age",
                    "bins": [18, 50, 60, 100],
                    "epsilon": 0.5,
                }
            ],
        },
        app / "queries" / "ages.toml",
    )
    job = (app / "jobs" / "dp.toml").read_text() + '\n[prepare]\nstatistics = "../queries/ages.toml"\n'
    (app / "jobs" / "dp_after_ages.toml").write_text(job)
    summary = run_app(app, job="dp_after_ages", out_dir=tmp_path / "run", rounds=2, baselines=False)
    assert len(json.loads((app / "released.json").read_text())) == 3  # the hook saw the released bins
    released = (tmp_path / "run" / "statistics" / "statistics.json").read_text()
    assert "exact_pooled" not in released  # no site's rows were pooled in the coordinator's process
    state = tmp_path / "run" / "sites"
    for site in SITES:
        priv = summary["privacy"]["sites"][site]
        assert priv["statistics_epsilon"] == pytest.approx(0.5, rel=1e-3)
        assert priv["ledger_epsilon_total"] > max(priv["epsilon"], 0.5)  # both, composed
        ledger = _ledger(state, site, capsys)
        kinds = [sorted(c["released"]) for c in ledger["charges"]]
        assert kinds == [["query"], ["evaluate", "train"], ["evaluate", "train"]]  # the job: per round
    assert "ledger total (statistics and job, composed)" in (tmp_path / "run" / "report.md").read_text()
