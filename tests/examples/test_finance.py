"""The finance example: deterministic per-bank data, and a short real Flower run."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from fedcore.config import load_site
from fedcore.data import prepare_site
from fedcore.datasets import GeneratorConfig, generate_transactions
from fedcore.harness.runner import run_app

APP = Path(__file__).resolve().parents[2] / "examples" / "finance"


def _module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def prepare() -> ModuleType:
    return _module(APP / "prepare.py", "_finance_prepare")


@pytest.fixture(scope="module")
def small(prepare: ModuleType) -> object:
    gen = GeneratorConfig(n_customers=300, n_terminals=600, n_days=40, n_banks=3, seed=3)
    return replace(prepare.CONFIG, generator=gen, start_day=10, train_days=10, delay_days=7, test_days=7)


def test_prepare_is_deterministic(prepare: ModuleType, small: object, tmp_path: Path) -> None:
    first = prepare.write_banks(tmp_path / "a", small)
    second = prepare.write_banks(tmp_path / "b", small)
    assert [p.name for p in first] == ["bank_0.csv", "bank_1.csv", "bank_2.csv"]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert prepare.is_current(tmp_path / "a", small)
    assert not prepare.is_current(tmp_path / "a", replace(small, test_days=6))


def test_each_bank_holds_only_its_own_customers(prepare: ModuleType, small: object, tmp_path: Path) -> None:
    paths = prepare.write_banks(tmp_path, small)
    truth = generate_transactions(small.generator)  # type: ignore[attr-defined]
    owner = truth.groupby("customer_id")["bank"].first()
    for bank, path in enumerate(paths):
        rows = pd.read_csv(path)
        assert list(rows.columns) == list(prepare.COLUMNS)
        assert set(rows["bank"]) == {bank}
        assert (owner[rows["customer_id"]].to_numpy() == bank).all()
        assert set(rows["is_test"]) == {0, 1}


def test_time_split_puts_test_days_after_the_delay(
    prepare: ModuleType, small: object, tmp_path: Path
) -> None:
    rows = pd.read_csv(prepare.write_banks(tmp_path, small)[0])
    train, test = rows[rows["is_test"] == 0], rows[rows["is_test"] == 1]
    assert train["tx_time_days"].between(10, 19).all()
    assert test["tx_time_days"].between(27, 33).all()


def test_the_seed_draws_the_population(prepare: ModuleType, small: object, tmp_path: Path) -> None:
    first = prepare.write_banks(tmp_path / "a", prepare.with_seed(3, small))
    other = prepare.write_banks(tmp_path / "b", prepare.with_seed(4, small))
    assert first[0].read_bytes() != other[0].read_bytes()


def test_site_files_match_the_csv_and_keep_identifiers_out(prepare: ModuleType) -> None:
    prepare.prepare(APP)
    site = load_site(APP / "sites" / "bank_4.toml")
    data = prepare_site(site)
    assert set(data.features) == set(prepare.FEATURES)
    assert not set(data.features) & set(prepare.IDENTIFIERS)
    assert (data.test_frame["is_test"] == 1).all()


def test_german_lenders_split_every_applicant_once(tmp_path: Path) -> None:
    german = _module(APP / "german" / "prepare.py", "_german_prepare")
    german.prepare(tmp_path)
    ids = [pd.read_csv(tmp_path / "data" / f"lender_{i}.csv")["applicant_id"] for i in range(3)]
    assert sorted(pd.concat(ids)) == list(range(1, 1001))
    assert [len(i) for i in ids] == [500, 300, 200]


@pytest.mark.slow
@pytest.mark.long
def test_short_dp_run_writes_federated_baseline_and_card_precision(tmp_path: Path) -> None:
    sets = ["train.local_steps=5", "baselines.epochs=1"]
    summary = run_app(APP, job="dp", out_dir=tmp_path, rounds=2, seed=5, sets=sets)
    assert set(summary["sites"]) == {f"bank_{b}" for b in range(5)}
    for name, metrics in summary["sites"].items():
        for key in ("auprc", "local_only_auprc", "local_only_own_auprc", "pooled_own_auprc"):
            assert 0.0 < metrics[key] <= 1.0, (name, key)
        assert 0.0 < metrics["local_only_dp_own_auprc"] <= 1.0  # the bank alone under the same DP
        assert 0.0 <= metrics["card_precision_top_k"] <= 1.0
        # only the federated job is charged (DP-SGD and the bank's noisy size, composed to the job's 3):
        # the DP local-only reference uses throwaway ledgers
        priv = summary["privacy"]["sites"][name]
        updates = next(r for r in priv["releases"] if r["what"] == "model updates")
        assert updates["epsilon"] < priv["epsilon"] <= 3.0 and priv["planned_epsilon"] >= 3.0 * (1 - 2e-3)
        assert priv["remaining_epsilon"] == pytest.approx(10.0 - priv["epsilon"], abs=0.01)
    assert 0.0 < summary["pooled_auprc"] <= 1.0
    stamp = json.loads((APP / "data" / "config.json").read_text())
    assert stamp["generator"]["seed"] == 5  # the job's seed drew the population
    report = (tmp_path / "report.md").read_text()
    assert "### card_precision_top_k" in report and "| alone, same DP |" in report


def test_consortium_columns_come_from_the_cells_and_enter_the_stamp(
    prepare: ModuleType, small: object, tmp_path: Path
) -> None:
    exact = prepare.write_banks(tmp_path / "e", small, "exact")
    rows = pd.read_csv(exact[0])
    assert list(rows.columns) == list(prepare.consortium_columns_for("exact"))
    assert rows[list(prepare.EXACT_FEATURES)].to_numpy().sum() > 0
    assert prepare.is_current(tmp_path / "e", small, "exact")
    assert not prepare.is_current(tmp_path / "e", small)  # the plain job's files differ
    gen = small.generator  # type: ignore[attr-defined]
    released = tmp_path / "cells.npy"
    np.save(released, np.zeros(gen.n_terminals * -(-gen.n_days // 7), dtype=np.int64))
    paths = prepare.write_banks(tmp_path / "r", small, released)
    rows = pd.read_csv(paths[1])
    assert list(rows.columns) == list(prepare.consortium_columns_for(released))
    trained = rows[rows["is_test"].notna()]  # history rows (statistic only) carry no features
    assert (trained[list(prepare.CONSORTIUM_FEATURES)] == 0).all().all()  # nothing but the cells enters
    assert prepare.is_current(tmp_path / "r", small, released)
    np.save(released, np.ones(gen.n_terminals * -(-gen.n_days // 7), dtype=np.int64))
    assert not prepare.is_current(tmp_path / "r", small, released)  # other cells: rewrite
    np.save(released, np.zeros(5, dtype=np.int64))
    with pytest.raises(ValueError, match="integer cells"):
        prepare.write_banks(tmp_path / "bad", small, released)


def test_window_features_declare_whose_rows_they_use_and_dp_sites_drop_the_crossing_ones() -> None:
    """Customer windows use the customer's other rows, terminal windows other customers' rows and
    labels: declared, so a bank refuses DP-SGD whose unit they would cross; the DP jobs' site files
    (sites-customer/) leave the terminal windows out and require customer-level DP."""
    from fedcore.config import load_job, load_site

    for b in range(5):
        site = load_site(APP / "sites" / f"bank_{b}.toml")
        assert {n.split("_")[0] for n in site.features_depending_on("unit")} == {"customer"}
        assert len(site.features_depending_on("other_units")) == 6
        dp = load_site(APP / "sites-customer" / f"bank_{b}.toml")
        assert dp.name == site.name and dp.dataset == site.dataset  # same bank, same ledger
        assert dp.features_depending_on("other_units") == ()
        assert len(dp.feature_columns) == 9 and dp.policy.unit_column == "customer_id"
    for name in ("dp", "dp_he"):
        spec = load_job(APP / "jobs" / f"{name}.toml")
        assert spec.mechanisms["dpsgd"].unit == "customer" and spec.prepare_sites == "../sites-customer"
