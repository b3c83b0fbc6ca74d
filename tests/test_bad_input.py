"""Bad input ends in a clear fedcore error naming the file, line or column and the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fedcore.cli import main
from fedcore.config import load_job, load_site
from fedcore.data import prepare_site
from fedcore.errors import ConfigError, DataError, SchemaError, UnknownNameError
from fedcore.harness.app import check_sites_agree

APP = Path(__file__).resolve().parents[1] / "examples" / "medical"


def _site_with_data(tmp_path: Path, rows: str, *, header: bool = False, extra: str = "") -> Path:
    src = (APP / "sites" / "cleveland.toml").read_text()
    data = tmp_path / "data.csv"
    data.write_text(rows)
    text = src.replace(
        'path = "../../../../shared/data/heart_disease/processed.cleveland.data"', f'path = "{data}"'
    )
    if header:
        text = text.replace("header = false", "header = true")
    site = tmp_path / "site.toml"
    site.write_text(text + extra)
    return site


GOOD = "63.0,1.0,1.0,145.0,233.0,1.0,2.0,150.0,0.0,2.3,3.0,0.0,6.0,0\n"
SICK = "67.0,1.0,4.0,160.0,286.0,0.0,2.0,108.0,1.0,1.5,2.0,3.0,3.0,2\n"


def test_malformed_csv_names_the_line(tmp_path: Path) -> None:
    site = _site_with_data(tmp_path, GOOD * 3 + "63.0,1.0,1.0\n" + SICK * 3)
    with pytest.raises(DataError, match=r"line 4 has 3 fields, expected 14"):
        prepare_site(load_site(site))


def test_non_numeric_value_names_line_and_column(tmp_path: Path) -> None:
    site = _site_with_data(tmp_path, GOOD * 3 + GOOD.replace("233.0", "high") + SICK * 3)
    with pytest.raises(DataError, match=r"line 4, column 'chol': 'high' is not a number"):
        prepare_site(load_site(site))


def test_missing_and_extra_columns_are_named(tmp_path: Path) -> None:
    cols = "age,sex,cp,trestbps,chol,fbs,restecg,thalach,exang,oldpeak,slope,ca,thal,num"
    bad_header = cols.replace("chol", "cholesterol") + "\n"
    site = _site_with_data(tmp_path, bad_header + GOOD, header=True)
    with pytest.raises(SchemaError, match=r"missing \['chol'\], extra \['cholesterol'\]"):
        prepare_site(load_site(site))


def test_label_with_one_class(tmp_path: Path) -> None:
    site = _site_with_data(tmp_path, GOOD * 8)
    with pytest.raises(SchemaError, match="one class only"):
        prepare_site(load_site(site))


def test_site_whose_schema_differs(tmp_path: Path) -> None:
    text = (APP / "sites" / "hungary.toml").read_text().replace("levels = [0, 1, 2]", "levels = [0, 1]")
    odd = tmp_path / "odd.toml"
    odd.write_text(text.replace("../../../../shared", str(APP.parents[2] / "shared")))
    with pytest.raises(SchemaError, match=r"site 'hungary' .* differs from site 'cleveland'"):
        check_sites_agree([load_site(APP / "sites" / "cleveland.toml"), load_site(odd)])


def test_job_naming_an_unknown_aggregator(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text((APP / "jobs" / "default.toml").read_text().replace('"fedyogi"', '"fedmagic"'))
    with pytest.raises(
        ConfigError, match=r"\[aggregator\] name: unknown aggregator 'fedmagic' \(did you mean 'fedavg'\?\)"
    ):
        load_job(job)
    with pytest.raises(UnknownNameError):
        from fedcore.aggregators import make_aggregator

        make_aggregator("fedmagic")


def test_missing_data_file_and_bad_toml(tmp_path: Path) -> None:
    site = _site_with_data(tmp_path, GOOD)
    (tmp_path / "data.csv").unlink()
    with pytest.raises(DataError, match="not found; fix \\[data\\] path"):
        prepare_site(load_site(site))
    broken = tmp_path / "broken.toml"
    broken.write_text("[site\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_site(broken)


def test_cli_reports_errors_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], shared_data: Path
) -> None:
    app = tmp_path / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    for site in (app / "sites").glob(
        "*.toml"
    ):  # the copy's data: the shared files (`fedcore run` reads them first)
        site.write_text(site.read_text().replace('"../../../../shared/data', f'"{shared_data}'))
    (app / "jobs" / "default.toml").write_text(
        (APP / "jobs" / "default.toml").read_text().replace('"fedyogi"', '"nope"')
    )
    assert main(["run", str(app), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "fedcore: error:" in err and "unknown aggregator 'nope'" in err and "Traceback" not in err


def test_seeds_option_parses_lists_and_ranges_and_rejects_the_rest(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fedcore.cli.main import _seeds

    assert _seeds("42-46") == [42, 43, 44, 45, 46]
    assert _seeds("7,3") == [7, 3]
    medical = str(Path(__file__).resolve().parents[1] / "examples" / "medical")
    assert main(["run", medical, "--seeds", "4x", "--quiet"]) == 2
    assert "give seeds as 42,43,44 or a range 42-46" in capsys.readouterr().err
    assert main(["run", medical, "--seeds", "1,2", "--seed", "3", "--quiet"]) == 2
    assert "--seed or --seeds, not both" in capsys.readouterr().err


def test_a_site_failing_mid_job_is_one_clean_line_and_its_traceback_goes_to_its_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], shared_data: Path
) -> None:
    app = tmp_path / "medical"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    for f in (app / "sites").glob("*.toml"):
        text = f.read_text().replace("../../../../shared", str(APP.parents[2] / "shared"))
        if f.stem == "va":  # a site whose HE key is not where its site file says
            text = text.replace("[privacy]", f'[privacy]\nhe_secret_key = "{tmp_path / "missing.ctx"}"')
        f.write_text(text)
    out = tmp_path / "run"
    assert (
        main(
            ["run", str(app), "--job", "he", "--rounds", "1", "--quiet", "--no-baselines", "--out", str(out)]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "Traceback" not in err and "\x1b[" not in err
    line = next(ln for ln in err.splitlines() if ln.startswith("fedcore: error:"))
    assert f"site 'va' ({app / 'sites' / 'va.toml'}): has no HE secret key" in line
    assert "Traceback" in (out / "sites" / "va" / "node.log").read_text()
    assert "has no HE secret key" in json.loads((out / "summary.json").read_text())["failed"]
