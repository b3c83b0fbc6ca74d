"""Six sites, three sampled per round, DP on, through the real Flower simulation: only the sampled
sites train and evaluate each round, and each site's ledger charges exactly the rounds it answered."""

from __future__ import annotations

import csv
import itertools
import json
import random
import shutil
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import dp_accounting
import pytest

from fedcore.harness.runner import run_app
from fedcore.privacy.accounting import event_from_json
from fedcore.site.ledger import PrivacyLedger

pytestmark = pytest.mark.slow

APP = Path(__file__).resolve().parents[2] / "examples" / "medical"
SITES = [f"clinic{i}" for i in range(6)]


def _app(tmp: Path, shared: Path) -> Path:
    """The medical app with six sites, each a sixth of the Cleveland rows, DP evaluations charged."""
    app = tmp / "medical"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__", "sites"))
    (app / "sites").mkdir()
    source = shared / "heart_disease" / "processed.cleveland.data"
    rows = [r for r in csv.reader(source.read_text().splitlines()) if r]
    random.Random(3).shuffle(rows)
    template = (APP / "sites" / "cleveland.toml").read_text()
    for i, name in enumerate(SITES):
        data = app / "sites" / f"{name}.csv"
        with data.open("w", newline="") as fh:
            csv.writer(fh).writerows(rows[i::6])
        text = template.replace('name = "cleveland"', f'name = "{name}"')
        text = text.replace("../../../../shared/data/heart_disease/processed.cleveland.data", str(data))
        (app / "sites" / f"{name}.toml").write_text(
            text.replace('evaluation = "withhold"', 'evaluation = "dp"')
        )
    pyproject = (app / "pyproject.toml").read_text()
    listed = ",".join(f"sites/{n}.toml" for n in SITES)
    old = "sites/cleveland.toml,sites/hungary.toml,sites/switzerland.toml,sites/va.toml"
    (app / "pyproject.toml").write_text(pyproject.replace(old, listed))
    return app


@pytest.fixture(scope="module")
def sampled_run(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("sampled")
    app, out = _app(tmp, shared_data), tmp / "out"
    sets = ["job.min_sites=2", "job.sites_per_round=3", "train.local_steps=5"]
    run_app(app, job="dp", out_dir=out, rounds=3, seed=5, sets=sets, baselines=False)
    return out, json.loads((out / "metrics.json").read_text())


def test_each_round_only_the_sampled_sites_train_and_evaluate(
    sampled_run: tuple[Path, dict[str, Any]],
) -> None:
    _, metrics = sampled_run
    rounds = metrics["rounds"]
    assert len(rounds) == 3
    for r in rounds:
        assert len(r["sampled_train"]) == len(r["sampled_evaluate"]) == 3
        assert set(r["sampled_train"]) <= set(SITES) and set(r["sampled_evaluate"]) <= set(SITES)
        assert set(r["train"]) == set(r["sampled_train"]), r  # every sampled site answered, no other
        assert set(r["evaluate"]) == set(r["sampled_evaluate"]), r
        assert not r["rejected"]
    took_part = Counter(s for r in rounds for s in r["sampled_train"])
    assert min(took_part.get(s, 0) for s in SITES) < 3  # sampling left some site out of some round


def _pld(events: list[Any], delta: float) -> float:
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    for e in events:
        acc.compose(e)
    return float(acc.get_epsilon(delta))


def test_each_site_is_charged_exactly_the_rounds_it_answered(
    sampled_run: tuple[Path, dict[str, Any]],
) -> None:
    out, metrics = sampled_run
    job_id = metrics["job_id"]
    for site in SITES:
        asked = {
            kind: [r["round"] for r in metrics["rounds"] if site in r[f"sampled_{kind}"]]
            for kind in ("train", "evaluate")
        }
        db = out / "sites" / site / "ledger.db"
        with sqlite3.connect(db) as conn:  # read-only look at the site's own records
            released = {
                kind: sorted(r for (r,) in conn.execute(
                    "SELECT round FROM releases WHERE job_id = ? AND kind = ?", (job_id, kind)
                ))
                for kind in ("train", "evaluate")
            }  # fmt: skip
            status, summary_json = conn.execute(
                "SELECT status, summary_json FROM plans WHERE job_id = ?", (job_id,)
            ).fetchone()
            sizes = [event_from_json(t) for (t,) in conn.execute("SELECT event_json FROM released_values")]
        assert released == asked, site  # the site answered exactly the rounds it was sampled in
        ledger = PrivacyLedger(db, site=site)
        charges = [c for c in ledger.summary().charges if c.job_id == job_id]
        if not asked["train"] and not asked["evaluate"]:
            assert charges == [] and status == "cancelled", site  # never sampled: charged nothing
            continue
        assert status == "cancelled"  # the job ended: rounds it was not asked are no longer held
        assert len(charges) == len(asked["train"]) + len(asked["evaluate"]), site  # one per answer
        charging = json.loads(summary_json)["charging"]
        per_train, per_eval = event_from_json(charging["train"]), event_from_json(charging["evaluate"])
        delta = charges[0].delta
        charged = _pld([event_from_json(c.event_json) for c in charges], delta)
        # its noisy training-set size (paid at its first answer) and one event per answer, no more
        expected = sizes + [per_train] * len(asked["train"]) + [per_eval] * len(asked["evaluate"])
        assert len(sizes) == 1 and charged == pytest.approx(_pld(expected, delta), rel=5e-3), site
        assert charged == pytest.approx(ledger.spent("heart_disease")[0], rel=5e-3)
        whole = json.loads(summary_json)["epsilon"]  # the plan: all three rounds of both kinds
        if len(expected) < 7:
            assert charged < whole - 1e-3, site  # a round it was not asked cost it nothing


@pytest.mark.he
def test_under_he_sampled_sites_catch_up_on_the_sums_they_missed(tmp_path: Path, shared_data: Path) -> None:
    import numpy as np

    out = tmp_path / "he"
    sets = ["job.min_sites=2", "job.sites_per_round=2", "train.local_steps=5"]
    run_app(APP, job="he", out_dir=out, rounds=4, seed=3, sets=sets, baselines=False)
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    assert len(rounds) == 4
    for r in rounds:
        assert set(r["train"]) == set(r["sampled_train"]) and len(r["sampled_train"]) == 2, r
        assert set(r["evaluate"]) == set(r["sampled_evaluate"]) and not r["rejected"], r
    # a site asked after missing a round decrypted the sums it missed (a message per round it was not in)
    names = {s for r in rounds for s in r["sampled_train"] + r["sampled_evaluate"]}
    asked = {
        s: sorted({r["round"] for r in rounds if s in r["sampled_train"] + r["sampled_evaluate"]})
        for s in names
    }
    assert any(b - a > 1 for rs in asked.values() for a, b in itertools.pairwise(rs)), asked
    # the final round's evaluators hold the final model, each computed from every round's sum: the same
    final = rounds[-1]["sampled_evaluate"]
    models = [np.load(out / "sites" / s / "model.npz") for s in final]
    for key in models[0].files:
        np.testing.assert_array_equal(models[0][key], models[1][key])
