"""``fedcore sweep``: one CSV row per grid point, a site's cap refusing one point without failing the
grid, and the reproducible mode: repeatable, stamped on every output, refused by a site served
through Flower."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fedcore.cli import main
from fedcore.config import load_job
from fedcore.config.job import JobRequest
from fedcore.errors import ConfigError
from fedcore.harness.sweep import load_grid

APP = Path(__file__).resolve().parents[1] / "examples" / "medical"
SHORT = ["--set", "job.rounds=1", "--set", "train.local_steps=10", "--quiet"]


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "sweep.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_grid_writes_one_row_per_point_a_table_and_a_plot(tmp_path: Path, shared_data: Path) -> None:
    args = ["sweep", str(APP), "--job", "fedavg", "--seeds", "42,43", "--aggregators", "fedavg,fedyogi"]
    assert main([*args, *SHORT, "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path)
    assert [(r["aggregator"], r["seed"], r["status"]) for r in rows] == [
        ("fedavg", "42", "ok"), ("fedavg", "43", "ok"), ("fedyogi", "42", "ok"), ("fedyogi", "43", "ok"),
    ]  # fmt: skip
    for r in rows:  # every metric the run reports, per site and averaged
        assert 0.0 < float(r["mean_site_accuracy"]) <= 1.0
        assert {
            "mean_site_auc",
            "mean_site_balanced_accuracy",
            "va.accuracy",
            "mean_majority_class_accuracy",
        } <= set(r)
        assert float(r["epsilon_max"]) == 0.0 and r["noise"] == "secure (CSPRNG)"
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    table = (tmp_path / "sweep.md").read_text()
    assert "| fedavg | 2 |" in table and "| fedyogi | 2 |" in table


def test_a_point_the_sites_refuse_is_one_row_and_the_grid_goes_on(tmp_path: Path, shared_data: Path) -> None:
    """The default suite's check of a refused point (no DP: the slow test below covers the caps)."""
    args = ["sweep", str(APP), "--job", "fedavg", "--seeds", "42", "--axis", "task.name=regression,binary"]
    assert main([*args, *SHORT, "--out", str(tmp_path)]) == 0
    rows = {r["task.name"]: r for r in _rows(tmp_path)}
    assert rows["regression"]["status"] == "refused" and rows["binary"]["status"] == "ok"
    assert "declared for 'binary'" in rows["regression"]["reason"]
    assert float(rows["binary"]["mean_site_accuracy"]) > 0


@pytest.mark.slow  # ~25 s: DP-SGD's noise calibrated per site and point (dp_accounting's PLD)
def test_a_site_cap_is_reported_per_point_and_the_grid_goes_on(tmp_path: Path, shared_data: Path) -> None:
    """The hospitals cap a job at epsilon 8 (their site files): epsilon 20 runs at 8, said per point;
    a point every site refuses (a job the labels do not serve) is one row, and the grid goes on."""
    args = ["sweep", str(APP), "--job", "dp", "--seeds", "42", "--epsilons", "1,20,none"]
    assert main([*args, *SHORT, "--axis", "task.name=binary,regression", "--out", str(tmp_path)]) == 0
    rows = {(r["epsilon"], r["task.name"]): r for r in _rows(tmp_path)}
    assert len(rows) == 6
    one, capped, none = rows["1", "binary"], rows["20", "binary"], rows["none", "binary"]
    assert one["status"] == "ok" and 0.9 < float(one["epsilon_max"]) <= 1.0 + 1e-9
    assert capped["status"] == "capped" and "max_epsilon_per_job 8" in capped["reason"]
    assert 7.9 < float(capped["epsilon_max"]) <= 8.0 + 1e-9 and float(capped["mean_site_accuracy"]) > 0
    assert none["status"] == "ok" and float(none["epsilon_max"]) == 0.0
    for eps in ("1", "20", "none"):
        assert rows[eps, "regression"]["status"] == "refused"
        assert "declared for 'binary'" in rows[eps, "regression"]["reason"]
    assert "refused: " in (tmp_path / "sweep.md").read_text()


@pytest.mark.slow  # ~10 s: three DP points
def test_reproducible_mode_repeats_and_is_stamped_everywhere(tmp_path: Path, shared_data: Path) -> None:
    args = ["sweep", str(APP), "--job", "dp", "--seeds", "42", "--epsilons", "1", "--reproducible", *SHORT]
    for run in ("a", "b"):
        assert main([*args, "--out", str(tmp_path / run)]) == 0
    a, b = _rows(tmp_path / "a")[0], _rows(tmp_path / "b")[0]
    assert a["mean_site_accuracy"] == b["mean_site_accuracy"] and a["mean_site_loss"] == b["mean_site_loss"]
    assert "SEEDED" in a["noise"] and "NOT private" in a["noise"]
    assert "SEEDED" in (tmp_path / "a" / "sweep.md").read_text().splitlines()[0]
    assert json.loads((tmp_path / "a" / "sweep.json").read_text())["reproducible"] is True
    secure = ["sweep", str(APP), "--job", "dp", "--seeds", "42", "--epsilons", "1", *SHORT]
    assert main([*secure, "--out", str(tmp_path / "c")]) == 0
    assert _rows(tmp_path / "c")[0]["mean_site_loss"] != a["mean_site_loss"]  # fresh CSPRNG noise


def test_a_site_served_through_flower_refuses_a_reproducible_job(shared_data: Path, tmp_path: Path) -> None:
    spec = load_job(APP / "jobs" / "dp.toml", ["job.reproducible=true"])
    wire = JobRequest("j1", 4, spec).to_wire()
    with pytest.raises(ConfigError, match="a site's DP draws are always secure"):
        JobRequest.from_wire(wire)  # what every ClientApp handler (fedcore node) parses first
    args = [
        "run",
        str(APP),
        "--job",
        "dp",
        "--set",
        "job.reproducible=true",
        "--quiet",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 2  # fedcore run says so before Flower starts


def test_a_grid_file_is_read_strictly(tmp_path: Path) -> None:
    grid = tmp_path / "grid.toml"
    grid.write_text(
        '[sweep]\nseeds = "42-44"\naggregators = ["fedavg"]\n[sweep.axes]\n"train.lr" = [0.1, 0.2]\n'
    )
    got = load_grid(grid, aggregators=("fedyogi",))
    assert (
        got.seeds == (42, 43, 44) and got.aggregators == ("fedyogi",) and got.axes == {"train.lr": (0.1, 0.2)}
    )
    grid.write_text("[sweep]\nseed = [42]\n")
    with pytest.raises(ConfigError, match="unknown key 'seed' \\(did you mean 'seeds'\\?\\)"):
        load_grid(grid)


@pytest.mark.parametrize(("job", "section"), [("he", "[privacy.he]"), ("secagg", "[privacy.secagg]")])
def test_a_job_the_engine_cannot_protect_is_refused_in_one_line(
    job: str, section: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The in-process engine neither encrypts nor masks: sweeping an HE or secure-aggregation job
    would label figures with a protection they never had, so the sweep stops before any point."""
    rc = main(["sweep", str(APP), "--job", job, "--seeds", "42", *SHORT, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and section in err[0] and "fedcore run" in err[0], err
    assert not (tmp_path / "out" / "sweep.csv").exists()
