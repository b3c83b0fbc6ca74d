"""An exact statistics batch under secure aggregation through Flower's simulation engine: the four
hospitals (their ``[secagg]`` with ``exact_statistics = true``), one SecAgg+ round; the sums equal
the pooled counts, and ``statistics.json`` holds no site's own answer."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fedcore.config import load_site
from fedcore.data import load_table
from fedcore.harness.statistics import run_statistics_app, write_statistics_file

APP = Path(__file__).resolve().parents[2] / "examples" / "medical"
SITES = ("cleveland", "hungary", "switzerland", "va")


def _site_files(tmp_path: Path, shared: Path) -> list[Path]:
    out = []
    for name in SITES:
        text = (APP / "sites" / f"{name}.toml").read_text().replace("../../../../shared", str(shared))
        text = text.replace("\nthreshold = 3 ", "\nexact_statistics = true\nthreshold = 3 ", 1)
        assert "exact_statistics = true" in text
        (tmp_path / f"{name}.toml").write_text(text)
        out.append(tmp_path / f"{name}.toml")
    return out


@pytest.mark.slow
def test_an_exact_batch_gives_the_coordinator_only_the_sums(tmp_path: Path, shared_data: Path) -> None:
    files = _site_files(tmp_path, shared_data.parent)
    batch = write_statistics_file(
        {
            "job": {"name": "exact", "min_sites": 4, "secagg": True},
            "query": [{"name": "diseased", "stat": "count", "where": "num > 0"},
                      {"name": "chest pain", "stat": "histogram", "column": "cp"}],
        },
        tmp_path / "exact.toml",
    )  # fmt: skip
    body = run_statistics_app(APP, batch, out_dir=tmp_path / "run", site_files=files)
    tables = [load_table(load_site(f)) for f in files]
    pooled = pd.concat(tables)
    assert body["secagg"] and sorted(body["survivors"]) == list(SITES) and body["failed"] == {}
    assert body["results"][0]["groups"]["all"] == {"count": int((pooled["num"] > 0).sum())}
    cp = [int((pooled["cp"] == level).sum()) for level in (1, 2, 3, 4)]
    assert body["results"][1]["groups"]["all"]["counts"] == cp
    text = (tmp_path / "run" / "statistics.json").read_text()
    assert "per_site" not in text and "answers" not in text  # the coordinator got sums only
    assert json.loads(text)["results"] == body["results"]


@pytest.mark.slow
def test_a_noisy_batch_releases_noisy_sums_and_charges_each_site(tmp_path: Path, shared_data: Path) -> None:
    """The same batch with distributed discrete Gaussian noise: the sites need no exact opt-in, the
    report says the sums are noisy with the summed noise's std, and names each site's epsilon as its
    own plan gave it (the ledgers: tests/adversarial/test_secagg_statistics_dp.py)."""
    files = _site_files(tmp_path, shared_data.parent)
    for f in files:  # no exact opt-in: the noise is what the sites accept
        f.write_text(f.read_text().replace("exact_statistics = true\n", ""))
    batch = write_statistics_file(
        {
            "job": {"name": "noisy", "min_sites": 4, "secagg": True, "noise": "ddgauss",
                    "noise_multiplier": 2.0},
            "query": [{"name": "diseased", "stat": "count", "where": "num > 0"},
                      {"name": "chest pain", "stat": "histogram", "column": "cp"}],
        },
        tmp_path / "noisy.toml",
    )  # fmt: skip
    body = run_statistics_app(APP, batch, out_dir=tmp_path / "run", site_files=files)
    pooled = pd.concat([load_table(load_site(f)) for f in files])
    assert body["secagg"] and sorted(body["survivors"]) == list(SITES) and body["failed"] == {}
    std = 2.0 * 2**0.5  # z x L2: a count and a histogram, one row moves each by at most 1
    assert body["noise"]["summed_std"] == pytest.approx(std) and body["noise"]["mechanism"] == "ddgauss"
    first, second = body["results"]
    assert not first["exact"] and first["noise_std"] == pytest.approx(std)
    assert abs(first["groups"]["all"]["count"] - int((pooled["num"] > 0).sum())) < 8 * std
    cp = [int((pooled["cp"] == level).sum()) for level in (1, 2, 3, 4)]
    assert all(abs(a - b) < 8 * std for a, b in zip(second["groups"]["all"]["counts"], cp, strict=True))
    charged = body["noise"]["epsilon_charged"]
    for name in SITES:
        plan = body["admission"][name]["plan"]
        assert plan["secagg"] == "ddgauss" and plan["epsilon"] > 0 and charged[name] == plan["epsilon"]
