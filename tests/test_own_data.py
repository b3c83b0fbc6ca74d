"""A newcomer's own data, end to end: ``fedcore init`` from one CSV, one site's file then saved the way
real files come (a UTF-8 BOM, ';' separators, columns in another order), default and DP jobs run
through Flower: the same figures as from the clean files."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcore.cli import main
from fedcore.config import load_site
from fedcore.data import prepare_site
from fedcore.harness.runner import load_app, run_app

HEART_COLUMNS = "age,sex,cp,trestbps,chol,fbs,restecg,thalach,exang,oldpeak,slope,ca,thal,num"


def _messy(path: Path) -> None:
    """Rewrite a comma CSV as Excel might: BOM, ';' separators, the columns in reverse order."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    with path.open("w", newline="", encoding="utf-8-sig") as f:
        csv.writer(f, delimiter=";").writerows([row[::-1] for row in rows])


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("own")
    data = root / "heart.csv"
    rows = [
        (shared_data / "heart_disease" / f"processed.{h}.data").read_text()
        for h in ("cleveland", "hungarian")
    ]
    data.write_text(HEART_COLUMNS + "\n" + "".join(rows))
    args = ["init", str(data), "--out", str(root / "clean"), "--label", "num", "--positive-above", "0"]
    assert main([*args, "--sites", "3", "--seed", "1"]) == 0
    shutil.copytree(root / "clean", root / "messy")
    _messy(root / "messy" / "data" / "site_1.csv")
    assert (root / "messy" / "data" / "site_1.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    return root / "clean", root / "messy"


def test_the_messy_file_loads_to_the_same_arrays(apps: tuple[Path, Path]) -> None:
    clean, messy = (load_app(a).sites for a in apps)
    for a, b in zip(clean, messy, strict=True):
        x, y = prepare_site(load_site(a)), prepare_site(load_site(b))
        for field in ("x_train", "y_train", "x_test", "y_test"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field))


def _run(app: Path, job: str, out: Path) -> dict[str, Any]:
    return run_app(app, job=job, out_dir=out, rounds=2, baselines=False)


@pytest.mark.slow
def test_default_and_dp_jobs_give_the_same_figures(apps: tuple[Path, Path], tmp_path: Path) -> None:
    clean, messy = apps
    a, b = _run(clean, "default", tmp_path / "c"), _run(messy, "default", tmp_path / "m")
    for key in ("mean_site_accuracy", "mean_site_auc", "mean_site_auprc"):
        assert a[key] == b[key], key  # deterministic without DP: identical
    assert a["mean_site_accuracy"] > 0.7
    dp_a, dp_b = _run(clean, "dp", tmp_path / "dc"), _run(messy, "dp", tmp_path / "dm")
    for run in (dp_a, dp_b):  # every site admitted and was charged, and the releases are listed
        sites = run["privacy"]["sites"]
        assert len(sites) == 3 and all(0 < s["epsilon"] < 3.1 for s in sites.values())
    plans = [json.loads((tmp_path / d / "admission.json").read_text()) for d in ("dc", "dm")]
    for site in plans[0]:  # the same plan (DP noise itself is secure, so accuracies differ a little)
        releases = [p[site]["plan"]["releases"] for p in plans]
        assert [r["what"] for r in releases[0]] == [r["what"] for r in releases[1]]
        assert releases[0][0]["epsilon"] == pytest.approx(releases[1][0]["epsilon"], rel=1e-3)  # calibrated
    assert abs(dp_a["mean_site_accuracy"] - dp_b["mean_site_accuracy"]) < 0.1
