"""The report people read: a table per metric, the majority class, one meaning of "alone", sites left
out of a mean named, a plot for runs whose sites withheld every per-round score, help for every option."""

from __future__ import annotations

import io
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from fedcore.cli import main
from fedcore.config import load_job, load_site
from fedcore.data import SiteData, prepare_site
from fedcore.harness.app import load_app
from fedcore.harness.summary import average_runs, build_summary
from fedcore.reporting.report import console_table, write_report

APP = Path(__file__).resolve().parents[1] / "examples" / "medical"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, dict[str, Any]]:
    from fedcore.harness.runner import run_app

    out = tmp_path_factory.mktemp("report")
    return out, run_app(APP, out_dir=out, rounds=2, baselines=True)


@pytest.fixture(scope="module")
def datas(run: tuple[Path, dict[str, Any]]) -> list[SiteData]:
    return [prepare_site(load_site(p)) for p in load_app(APP).sites]


def _table(report: str, metric: str) -> tuple[list[str], dict[str, list[str]]]:
    """Header and rows (by first cell) of the Markdown table under ``### metric``."""
    block = report.split(f"### {metric}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in block if not line.startswith("|---")]
    return cells[0][1:], {row[0]: row[1:] for row in cells[1:]}


def _headline(report: str, metric: str) -> str:
    (line,) = [x for x in report.splitlines() if x.startswith(f"- {metric} (")]
    return line


def _figure(line: str, label: str) -> float:
    return float(re.search(rf"[:;] {re.escape(label)} \**([0-9.]+)", line).group(1))  # type: ignore[union-attr]


def test_every_metric_of_the_summary_has_a_table_with_its_columns(run: tuple[Path, dict[str, Any]]) -> None:
    out, summary = run
    report = (out / "report.md").read_text()
    metrics = {k.removeprefix("mean_site_") for k in summary if k.startswith("mean_site_")} - {"loss"}
    assert {"accuracy", "auc", "auprc"} <= metrics
    for m in metrics:
        header, rows = _table(report, m)
        assert header[:3] == ["federated", "alone", "pooled"], m
        assert header[-1] == "alone, all test sets (published convention)", m
        assert set(rows) == {"cleveland", "hungary", "switzerland", "va", "**mean**"}, m
        assert float(rows["va"][0]) == pytest.approx(summary["sites"]["va"][m], abs=5e-4)
    assert "### loss" not in report


def test_majority_class_accuracy_is_the_training_majority_scored_on_the_test_set(
    run: tuple[Path, dict[str, Any]], datas: list[SiteData]
) -> None:
    out, summary = run
    for d in datas:  # oracle: count the labels
        positives = int(np.sum(d.y_train == 1))
        majority = 1 if 2 * positives >= len(d.y_train) else 0
        expected = sum(int(y) == majority for y in d.y_test) / len(d.y_test)
        assert summary["sites"][d.site]["majority_class_accuracy"] == pytest.approx(expected)
    assert summary["sites"]["switzerland"]["majority_class_accuracy"] == pytest.approx(15 / 16)  # README
    assert summary["mean_majority_class_accuracy"] == pytest.approx(0.721, abs=5e-4)  # README
    report = (out / "report.md").read_text()
    header, rows = _table(report, "accuracy")
    assert float(rows["**mean**"][header.index("majority class")]) == pytest.approx(0.721, abs=5e-4)
    assert _figure(_headline(report, "accuracy"), "majority class") == pytest.approx(0.721, abs=5e-4)


def test_headline_alone_is_the_mean_of_the_tables_alone_column(run: tuple[Path, dict[str, Any]]) -> None:
    out, summary = run
    report = (out / "report.md").read_text()
    for m in ("accuracy", "auc", "auprc"):
        own = [summary["sites"][s][f"local_only_own_{m}"] for s in summary["sites"]]
        assert summary[f"mean_local_only_own_{m}"] == pytest.approx(np.mean(own))
        header, rows = _table(report, m)
        column = [float(r[header.index("alone")]) for name, r in rows.items() if name != "**mean**"]
        assert _figure(_headline(report, m), "alone") == pytest.approx(np.mean(column), abs=1e-3)
    headline = report.split("Means over the sites", 1)[1].split("###", 1)[0]
    published = [x for x in headline.splitlines() if "mean_local_only_<metric>" in x]
    assert len(published) == 1 and published[0].startswith("- published convention")
    assert "local-only" not in report  # the ambiguous name is gone: "alone" or "published convention"
    assert f"accuracy {summary['mean_local_only_accuracy']:.3f}" in published[0]


def test_a_site_whose_test_set_has_one_class_is_named_and_left_out_of_the_mean(
    run: tuple[Path, dict[str, Any]], datas: list[SiteData], tmp_path: Path
) -> None:
    out, _ = run
    sites = [replace(d, y_test=np.ones_like(d.y_test)) if d.site == "switzerland" else d for d in datas]
    spec = load_job(APP / "jobs" / "default.toml", ["job.rounds=2"])
    summary = build_summary(spec, out, 1.0, sites, (), baselines=False)
    assert summary["excluded"] == {"auc": ["switzerland"], "auprc": ["switzerland"]}
    assert summary["one_class_test_sets"] == ["switzerland"]
    others = [summary["sites"][s]["auc"] for s in ("cleveland", "hungary", "va")]
    assert "auc" not in summary["sites"]["switzerland"]
    assert summary["mean_site_auc"] == pytest.approx(np.mean(others))
    summary = {**summary, "app": str(tmp_path)}
    report = write_report(tmp_path, summary).read_text()
    assert "- auc (mean over 3 of 4 sites; switzerland's test set has one class): federated" in report
    assert (
        "auc: mean over 3 of 4 sites; switzerland's test set has one class; left out of the mean." in report
    )
    _, rows = _table(report, "auc")
    assert rows["switzerland"] == [""]
    assert float(rows["**mean**"][0]) == pytest.approx(np.mean(others), abs=5e-4)


def test_union_of_left_out_sites_over_seeds() -> None:
    runs = [
        {"sites": {"a": {"auc": 0.6}, "b": {}}, "excluded": {"auc": ["b"]}, "one_class_test_sets": ["b"]},
        {"sites": {"a": {}, "b": {"auc": 0.7}}, "excluded": {"auc": ["a"]}, "one_class_test_sets": ["a"]},
    ]
    mean = average_runs(runs, np.mean)
    assert mean["excluded"] == {"auc": ["a", "b"]} and mean["one_class_test_sets"] == ["a", "b"]
    assert mean["sites"] == {"a": {}, "b": {}}


def _withheld_summary() -> dict[str, Any]:
    return {
        "job": "dp",
        "aggregator": "fedyogi",
        "rounds": 3,
        "seed": 1,
        "wall_seconds": 1.0,
        "per_round_mean_accuracy": [None, None, None],
        "mean_site_accuracy": 0.8,
        "mean_majority_class_accuracy": 0.7,
        "sites": {"a": {"accuracy": 0.75, "majority_class_accuracy": 0.6}, "b": {"accuracy": 0.85}},
    }


def test_plot_is_written_when_the_sites_withheld_every_round(tmp_path: Path) -> None:
    report = write_report(tmp_path, _withheld_summary()).read_text()
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
    assert "per-round scores withheld by the sites' privacy policies (all rounds)" in report
    nothing = {**_withheld_summary(), "sites": {}}  # no line at all: no legend, no warning
    del nothing["mean_site_accuracy"], nothing["mean_majority_class_accuracy"]
    write_report(tmp_path, nothing)


def test_console_table_lists_the_headline_figures(run: tuple[Path, dict[str, Any]]) -> None:
    _, summary = run
    buf = io.StringIO()
    Console(file=buf, width=120).print(console_table(summary))
    text = buf.getvalue()
    assert re.search(r"metric\s*┃\s*federated\s*┃\s*alone\s*┃\s*pooled", text)
    for key in ("mean_site_auc", "mean_local_only_own_auc", "pooled_auc"):
        assert f"{summary[key]:.3f}" in text


def test_run_help_has_a_help_text_for_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    assert exit_.value.code == 0
    after_usage = capsys.readouterr().out.split("positional arguments:", 1)[1]
    text = "\n".join(line for line in after_usage.splitlines() if line.startswith(" "))  # no headings
    entries = re.split(r"\n(?=  \S)", text)
    names = {re.match(r"\s*(\S+)", e).group(1) for e in entries}  # type: ignore[union-attr]
    assert names >= {"app", "--job", "--out", "--rounds", "--seed", "--seeds", "--set", "--no-baselines"}
    for entry in entries:
        parts = [p for p in re.split(r"\s{2,}", entry.strip()) if p]
        assert len(parts) >= 2, f"no help text: {entry!r}"


def test_a_deployment_run_reports_what_the_sites_released(
    run: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """The ServerApp of a deployment run writes summary.json and report.md from metrics.json alone."""
    import shutil

    from fedcore.config import load_job
    from fedcore.reporting.released import build_released_summary

    out, harness = run
    shutil.copy(out / "metrics.json", tmp_path / "metrics.json")
    spec = load_job(APP / "jobs" / "default.toml", ["job.rounds=2"])
    summary = build_released_summary(spec, tmp_path, 1.0)
    assert summary["mean_site_accuracy"] == pytest.approx(harness["mean_site_accuracy"])  # clear evaluations
    assert "deployment run" in summary["notes"][0] and "pooled_accuracy" not in summary
    report = write_report(tmp_path, summary).read_text()
    assert "### accuracy" in report and (tmp_path / "accuracy.png").is_file()
