"""The finance consortium jobs (issue 12): the prepare hook's choice of data, the released cells,
and ``consortium_dp_he`` end to end through Flower on a small population."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedcore.analytics.noisy import plan_secure
from fedcore.analytics.query import QueryRequest, load_queries
from fedcore.cli import main
from fedcore.config import load_job, load_site
from fedcore.errors import ConfigError
from fedcore.harness.runner import run_app
from tests.examples.test_finance import APP, _module

SMALL_CUSTOMERS = 300  # also 300 terminals: 300 x 14 weeks = 4,200 cells


@pytest.fixture(scope="module")
def prepare():  # type: ignore[no-untyped-def]
    return _module(APP / "prepare.py", "_finance_prepare_consortium")


def _small_app(tmp_path: Path) -> Path:
    """A copy of the finance app whose consortium population has 300 customers (its query's grid too)."""
    app = tmp_path / "finance"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("data", "german", "__pycache__", ".fedcore"))
    with (app / "prepare.py").open("a") as f:
        f.write(f"\nCONSORTIUM = consortium_data({SMALL_CUSTOMERS})\n")
    query = (app / "queries" / "consortium.toml").read_text()
    cells = SMALL_CUSTOMERS * 14
    (app / "queries" / "consortium.toml").write_text(query.replace("stop = 280000", f"stop = {cells}"))
    return app


def test_jobs_name_their_data_sites_and_statistic() -> None:
    exact = load_job(APP / "jobs" / "consortium.toml")
    assert (exact.prepare_data, exact.prepare_sites, exact.prepare_statistics) == (
        "consortium", "../sites-consortium", None,
    )  # fmt: skip
    assert set(exact.baselines.drop) == {f"consortium_frauds_{d}d" for d in (1, 7, 30)}
    private = load_job(APP / "jobs" / "consortium_dp_he.toml")
    assert private.prepare_data == "consortium_dp" and private.he is not None
    assert private.prepare_statistics == "../queries/consortium.toml"
    assert private.mechanisms["dpsgd"].unit == "customer" and private.mechanisms["dpsgd"].delta <= 1e-6
    for b in range(5):
        plain = load_site(APP / "sites-consortium" / f"bank_{b}.toml")
        assert len(plain.features_depending_on("other_units")) == 9  # 6 terminal windows + 3 exact
        dp = load_site(APP / "sites-consortium-dp" / f"bank_{b}.toml")
        features = [c.name for c in dp.feature_columns]
        assert "consortium_cell" not in features and dp.features_depending_on("other_units") == ()
        assert features[-2:] == ["consortium_frauds_7d", "consortium_frauds_28d"]
        assert dp.policy.budget_epsilon == 4.0 and dp.policy.budget_delta <= 1e-6
        assert dp.policy.he_noise_share == "split" and dp.name == plain.name


def test_the_hook_maps_data_names_to_folders_and_refuses_others(prepare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert prepare._choice(None, "consortium", None) == ("exact", "consortium")
    assert prepare._choice(None, "consortium_dp", None) == ("pending", "consortium-dp")
    assert prepare._choice(None, "consortium_secagg", None) == ("pending", "consortium-secagg")
    assert prepare._choice(None, "consortium_secagg_dp", None) == ("pending", "consortium-secagg-dp")
    assert prepare._choice(None, None, None) == (None, "")
    with pytest.raises(ConfigError, match="one of"):
        prepare._choice(None, "consortia", None)
    with pytest.raises(ConfigError, match="exact cells"):
        prepare._choice(None, "consortium", tmp_path / "statistics.json")
    with pytest.raises(ConfigError, match="consortium_dp"):
        prepare._choice(None, None, tmp_path / "statistics.json")


def _statistics_json(path: Path, values: list[float]) -> Path:
    rows = [{"group": "all", "item": f"[{i}, {i + 1})", "value": v} for i, v in enumerate(values)]
    rows.append({"group": "all", "item": "other", "value": 3.0})
    body = {"results": [{"name": "consortium frauds", "stat": "histogram", "rows": rows}]}
    path.write_text(json.dumps(body))
    return path


def test_released_histogram_becomes_integer_cells_of_the_grid(prepare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = prepare.consortium_data(10)  # 10 terminals x 14 weeks
    values = [float(v) for v in np.arange(140) % 5 - 2]  # signed noisy counts, "other" left out
    out = prepare.released_cells(_statistics_json(tmp_path / "s.json", values), data, tmp_path / "c.npy")
    cells = np.load(out)
    assert cells.dtype == np.int64 and cells.tolist() == [int(v) for v in values]
    with pytest.raises(ConfigError, match="140"):
        prepare.released_cells(_statistics_json(tmp_path / "t.json", values[:-1]), data, tmp_path / "d.npy")


def test_dp_data_carries_the_cell_and_history_rows_only_for_the_statistic(prepare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = prepare.consortium_data(SMALL_CUSTOMERS)
    paths = prepare.write_banks(tmp_path / "p", data, "pending")
    rows = pd.concat(pd.read_csv(p) for p in paths)
    assert list(rows.columns) == list(prepare.consortium_columns_for("pending"))
    assert (rows["consortium_cell"] == rows["terminal_id"] * 14 + rows["tx_time_days"] // 7).all()
    history = rows["is_test"].isna()
    assert rows.loc[history, list(prepare.CONSORTIUM_FEATURES)].isna().all().all()
    assert (rows.loc[~history, list(prepare.CONSORTIUM_FEATURES)] == 0).all().all()  # nothing released yet
    assert set(rows.loc[history, "tx_time_days"]) >= set(range(30))  # all days enter the statistic
    assert prepare.is_current(tmp_path / "p", data, "pending")
    site = load_site(APP / "sites-consortium-dp" / "bank_0.toml")
    from dataclasses import replace

    from fedcore.data import prepare_site

    got = prepare_site(replace(site, data_path=paths[0]))
    bank0 = pd.read_csv(paths[0])
    assert got.dropped_rows == int(bank0["is_test"].isna().sum())  # history rows: statistic only


@pytest.mark.slow
@pytest.mark.long
def test_consortium_dp_he_runs_the_statistic_then_trains_within_each_banks_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through Flower: the HE histogram of fraud cells, the hook's features from what it released,
    customer-level DP-SGD under HE after it; each ledger holds both charges, within epsilon 4."""
    app = _small_app(tmp_path)
    sets = ["train.local_steps=3", "baselines.epochs=1"]
    summary = run_app(app, job="consortium_dp_he", out_dir=tmp_path / "run", rounds=2, sets=sets)
    released = np.load(app / "data" / "consortium-dp" / "released_cells.npy")
    assert released.shape == (SMALL_CUSTOMERS * 14,)
    statistics = json.loads((tmp_path / "run" / "statistics" / "statistics.json").read_text())
    assert statistics["he"] and "central-DP accuracy" in statistics["results"][0]["noise"]
    rows = pd.read_csv(app / "data" / "consortium-dp" / "bank_0.csv")
    assert rows["consortium_frauds_28d"].abs().sum() > 0  # features from the released cells
    for b in range(5):
        name = f"bank_{b}"
        site = summary["sites"][name]
        for key in ("auprc", "local_only_own_auprc", "local_only_dp_own_auprc", "pooled_own_auprc"):
            assert 0.0 < site[key] <= 1.0, (name, key)
        priv = summary["privacy"]["sites"][name]
        assert priv["statistics_epsilon"] == pytest.approx(1.0, abs=1e-3)
        assert priv["statistics_unit"] == "customer"
        train = next(r for r in priv["releases"] if r["what"] == "model updates")
        # the job's 3 is its total: DP-SGD and, if this job pays for it, the noisy customer count
        assert train["epsilon"] <= priv["epsilon"] * (1 + 1e-6) and priv["epsilon"] <= 3.0
        assert 3.0 < priv["ledger_epsilon_total"] <= 4.0 and priv["ledger_delta"] <= 1e-6
        ledger = _ledger(app / "sites-consortium-dp" / f"{name}.toml", tmp_path / "run" / "sites", capsys)
        kinds = [sorted(c["released"]) for c in ledger["charges"]]
        # the statistic's charge first, then one per training round answered (rounds = 2)
        assert kinds[0] == ["query"] and len(kinds) == 3, (name, kinds)
        assert all("train" in k for k in kinds[1:]), (name, kinds)
    assert summary["baselines_drop"] == ["consortium_frauds_7d", "consortium_frauds_28d"]


def test_the_secagg_job_names_its_exact_statistic_and_banks_that_opt_in() -> None:
    job = load_job(APP / "jobs" / "consortium_secagg.toml")
    assert (job.prepare_data, job.prepare_sites, job.prepare_statistics) == (
        "consortium_secagg", "../sites-consortium-secagg", "../queries/consortium_secagg.toml",
    )  # fmt: skip
    assert job.he is None and job.secagg is None and not job.mechanisms  # no DP, plain training
    batch = load_queries(APP / "queries" / "consortium_secagg.toml")
    assert batch.secagg and batch.queries[0].name == "consortium frauds" and batch.queries[0].epsilon == 0
    for b in range(5):
        site = load_site(APP / "sites-consortium-secagg" / f"bank_{b}.toml")
        assert site.secagg is not None and site.secagg.exact_statistics and site.policy.min_sites >= 3
        assert "consortium_cell" not in [c.name for c in site.feature_columns]


def test_the_secagg_dp_job_names_its_noisy_statistic_and_banks_that_charge_their_own_noise() -> None:
    job = load_job(APP / "jobs" / "consortium_secagg_dp.toml")
    assert (job.prepare_data, job.prepare_sites, job.prepare_statistics) == (
        "consortium_secagg_dp", "../sites-consortium-secagg-dp", "../queries/consortium_secagg_dp.toml",
    )  # fmt: skip
    assert job.he is None and job.secagg is None and not job.mechanisms  # the DP is the statistic's
    batch = load_queries(APP / "queries" / "consortium_secagg_dp.toml")
    assert batch.noisy and batch.noise == "ddgauss" and batch.queries[0].rows_per_unit == 1
    request = QueryRequest("consortium", 5, batch)
    for b in range(5):
        site = load_site(APP / "sites-consortium-secagg-dp" / f"bank_{b}.toml")
        assert site.secagg is not None and not site.secagg.exact_statistics and site.secagg.trust == "own"
        assert site.policy.unit_column == "customer_id" and site.policy.min_sites >= 3
        plan = plan_secure(request, site)  # per customer, its own noise: the epsilon the files state
        assert plan.unit == "customer" and round(plan.epsilon, 2) == 1.01
    for path in ("jobs/consortium_secagg_dp.toml", "queries/consortium_secagg_dp.toml"):
        assert "epsilon 1.01 per" in (APP / path).read_text()


def test_the_readme_states_the_distributed_dp_figures_of_its_json() -> None:
    """examples/finance/README.md, "Per-terminal counts with distributed DP": every figure is the
    benchmark's (benchmarks/results/consortium_secagg_dp.json), rounded as printed."""
    body = json.loads((APP.parents[1] / "benchmarks" / "results" / "consortium_secagg_dp.json").read_text())
    readme = " ".join((APP / "README.md").read_text().split())
    start = readme.index("**Per-terminal counts with distributed DP")
    text = readme[start : readme.index("**Measured through Flower", start)]
    own = set(body["epsilon_charged_own"].values())
    assert len(own) == 1 and sorted(body["survivors"]) == [f"bank_{b}" for b in range(5)]
    mae, nonempty = body["mae_per_cell"], body["mae_cells_with_frauds"]
    figures = [
        f"epsilon charged per bank: {own.pop():.3f}** per customer",
        f"charged {body['epsilon_if_threshold']:.3f} for the same noise",
        f"27,933 frauds in {body['cells_with_frauds']:,} non-empty cells of {body['cells']:,}",
        f"mean absolute error {mae:.2f} per cell** ({nonempty:.2f}",
        f"the noise alone gives {body['noise_only_mae_expected']:.2f} in expectation",
        f"RMSE {body['rmse_per_cell']:.2f}, and **{100 * body['share_cells_exact']:.2f}% of cells",
        f"released total is {-body['noisy_total_minus_exact']:,.0f} below",
        f"({body['frauds_once_per_customer']:,} customers with a fraud)",
        f"{body['wall_s']:.0f} s on 2 shared cores",
        f"noise_multiplier = {body['noise']['noise_multiplier']:g}",
        f"noise of std {body['noise']['summed_std']:g} per cell",
    ]
    assert body["exact_frauds"] == 27_933
    missing = [f for f in figures if f not in text]
    assert not missing, missing
    # "mostly the one-fraud-per-customer bound": the bound removes more than the noise could add
    assert body["exact_frauds"] - body["frauds_once_per_customer"] > 0.9 * -body["noisy_total_minus_exact"]


@pytest.mark.slow
@pytest.mark.long  # CI: tests/flower/test_secagg_statistics_simulation.py sums exact cells through Flower
def test_consortium_secagg_sums_the_exact_cells_then_trains(tmp_path: Path) -> None:
    """Through Flower: one SecAgg+ round sums the banks' exact fraud cells; the released vector equals
    the cells counted over every bank's rows, and training uses the features from it."""
    app = _small_app(tmp_path)
    query = app / "queries" / "consortium_secagg.toml"
    query.write_text(query.read_text().replace("stop = 280000", f"stop = {SMALL_CUSTOMERS * 14}"))
    sets = ["train.local_steps=3", "baselines.epochs=1"]
    summary = run_app(app, job="consortium_secagg", out_dir=tmp_path / "run", rounds=2, sets=sets)
    statistics = json.loads((tmp_path / "run" / "statistics" / "statistics.json").read_text())
    assert statistics["secagg"] and len(statistics["survivors"]) == 5
    released = np.load(app / "data" / "consortium-secagg" / "released_cells.npy")
    banks = [pd.read_csv(app / "data" / "consortium-secagg" / f"bank_{b}.csv") for b in range(5)]
    frauds = pd.concat(banks).query("fraud == 1")["consortium_cell"].astype(int)
    assert np.array_equal(released, np.bincount(frauds, minlength=SMALL_CUSTOMERS * 14))  # exact
    for b in range(5):
        site = summary["sites"][f"bank_{b}"]
        assert 0.0 < site["auprc"] <= 1.0 and 0.0 < site["local_only_own_auprc"] <= 1.0


def _ledger(site: Path, state: Path, capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    capsys.readouterr()
    assert main(["ledger", str(site), "--state-dir", str(state), "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_consortium_job_trains_on_the_exact_feature_and_each_bank_alone_without_it(tmp_path: Path) -> None:
    app = _small_app(tmp_path)
    sets = ["train.local_steps=5", "baselines.epochs=1"]
    summary = run_app(app, job="consortium", out_dir=tmp_path / "run", rounds=2, sets=sets)
    first = np.load(tmp_path / "run" / "model.npz")
    assert 18 in first[first.files[0]].shape  # 15 own features + 3 exact consortium counts
    rows = pd.read_csv(app / "data" / "consortium" / "bank_2.csv")
    assert (
        rows[["consortium_frauds_1d", "consortium_frauds_7d", "consortium_frauds_30d"]].to_numpy().max() > 0
    )
    assert json.loads((app / "data" / "consortium" / "config.json").read_text())["cells"] == "exact"
    for b in range(5):
        site = summary["sites"][f"bank_{b}"]
        for key in ("auprc", "local_only_own_auprc", "pooled_own_auprc"):
            assert 0.0 < site[key] <= 1.0, (b, key)
    assert summary["baselines_drop"] == [
        "consortium_frauds_1d",
        "consortium_frauds_7d",
        "consortium_frauds_30d",
    ]
    assert "prepare_statistics" not in summary  # no statistic, nothing private released


def test_the_per_bank_report_reads_both_runs_and_checks_the_bars() -> None:
    sys.path.insert(0, str(APP.parents[1] / "benchmarks"))
    report = _module(APP.parents[1] / "benchmarks" / "consortium_report.py", "_consortium_report")

    def site(auprc: float, **extra: float) -> dict[str, float]:
        return {"auprc": auprc, **extra}

    exact = {"sites": {f"bank_{b}": site(0.70, local_only_own_auprc=0.60 + 0.01 * b, pooled_own_auprc=0.65)
                       for b in range(5)}}  # fmt: skip
    releases = [{"what": "model updates", "epsilon": 3.0}]
    dp = {
        "sites": {f"bank_{b}": site(0.40, local_only_dp_own_auprc=0.2) for b in range(5)},
        "privacy": {"sites": {f"bank_{b}": {"statistics_epsilon": 1.0, "epsilon": 3.04, "releases": releases,
                                            "ledger_epsilon_total": 3.995, "ledger_delta": 1e-6}
                              for b in range(5)}},
    }  # fmt: skip
    rows = report.rows(exact, dp)
    assert [r["bank"] for r in rows] == [f"bank_{b}" for b in range(5)]
    assert rows[4]["alone"] == pytest.approx(0.64) and rows[0]["epsilon_ledger_total"] == 3.995
    bars = report.bars(rows)
    assert bars["non_private_bar_met"] and bars["min_exact_gain"] == pytest.approx(0.06)
    assert not bars["dp_bar_met"] and bars["min_dp_gap"] == pytest.approx(-0.24)
    assert bars["every_ledger_within_epsilon_4"]
    assert "| bank_4 | 0.640 |" in report.table(rows)
    other = report.rows({"sites": {b: {**v, "local_only_own_auprc": v["local_only_own_auprc"] + 0.04}
                                   for b, v in exact["sites"].items()}}, None)  # fmt: skip
    mean = report.mean_rows([rows, other])  # two seeds: each figure averaged, a run without DP gives None
    assert mean[4]["alone"] == pytest.approx(0.66) and mean[0]["fed_dp_consortium_dpsgd_he"] is None
    assert report.bars(mean)["min_exact_gain"] == pytest.approx(0.04)
