"""``fedcore init``: an app written from one real CSV loads strictly, runs through Flower (default and
DP jobs), never overwrites, and refuses bad input with what, the value and the fix."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import statistics
import tomllib
from pathlib import Path

import numpy as np
import pytest

from fedcore.appinit import InitResult, init_app
from fedcore.appinit.infer import read_table
from fedcore.cli.init import add_init_command
from fedcore.config import load_job, load_site
from fedcore.data import prepare_site
from fedcore.errors import ConfigError, DataError
from fedcore.harness.runner import check_sites_agree, load_app, run_app

REPO = Path(__file__).resolve().parents[1]
HEART_COLUMNS = "age,sex,cp,trestbps,chol,fbs,restecg,thalach,exang,oldpeak,slope,ca,thal,num"


def _german_columns() -> tuple[str, ...]:
    """The column names of ``examples/finance/german/prepare.py``."""
    spec = importlib.util.spec_from_file_location(
        "_german_prepare", REPO / "examples/finance/german/prepare.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tuple(module.COLUMNS)


@pytest.fixture(scope="module")
def german_csv(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """german.data (no header, space-separated) as a CSV with a header and an applicant id."""
    rows = [ln.split() for ln in (shared_data / "german_credit" / "german.data").read_text().splitlines()]
    path = tmp_path_factory.mktemp("german") / "german.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["applicant_id", *_german_columns()])
        writer.writerows([i + 1, *r] for i, r in enumerate(rows) if r)
    return path


@pytest.fixture(scope="module")
def heart_csv(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """Cleveland's heart-disease rows with a header; `?` marks missing values."""
    path = tmp_path_factory.mktemp("heart") / "cleveland.csv"
    data = (shared_data / "heart_disease" / "processed.cleveland.data").read_text()
    path.write_text(HEART_COLUMNS + "\n" + data)
    return path


@pytest.fixture(scope="module")
def german_app(german_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> InitResult:
    out = tmp_path_factory.mktemp("apps") / "credit"
    return init_app(german_csv, out, label="credit_risk", positive=["2"], ids=["applicant_id"])


def test_the_app_loads_strictly_and_every_site_prepares(german_app: InitResult) -> None:
    app = load_app(german_app.app_dir)
    sites = [load_site(p) for p in app.sites]
    check_sites_agree(sites)
    assert [s.name for s in sites] == ["site_0", "site_1", "site_2"]
    assert sum(german_app.sites.values()) == 1000 and max(german_app.sites.values()) <= 334
    cols = {c.name: c for c in sites[0].columns}
    assert cols["applicant_id"].tag == "identifier"
    assert "applicant_id" not in [c.name for c in sites[0].feature_columns]
    assert cols["checking_status"].levels == ("A11", "A12", "A13", "A14")  # text levels stay strings
    assert cols["installment_rate"].levels == (1, 2, 3, 4)  # integral codes stay numbers
    assert (cols["age"].center, cols["age"].scale) == (35.5, 11.4)  # the file's mean and sd, 3 digits
    assert sites[0].label == "credit_risk" and sites[0].positive == (2,)
    assert sites[0].undeclared_scaling == ()  # under DP no site refuses for want of constants
    jobs = {name: load_job(app.job_file(name)) for name in ("default", "dp", "he")}
    default, dp = jobs["default"], jobs["dp"]
    train = default.train
    assert (default.rounds, default.local_steps, train.batch_size, train.lr, train.optimizer) == (
        10, 50, 32, 0.01, "adam",
    )  # fmt: skip  # benchmarks/init_defaults.py
    assert (default.model.name, default.aggregator.name, default.min_sites) == ("logreg", "fedavg", 3)
    assert default.evaluate.metric == "auc"  # plotted and compared first: what a credit user reads
    assert (default.baselines.steps, default.baselines.train.optimizer) == (500, "adam")  # the job's compute
    assert jobs["he"].he is not None
    assert cols["age"].bounds == (10.0, 80.0)  # the file's 19..75, rounded outward
    assert cols["credit_amount"].bounds == (0.0, 20000.0)  # 250..18424
    dpsgd = dp.mechanisms["dpsgd"]
    assert (dpsgd.epsilon, dpsgd.delta, dpsgd.max_grad_norm) == (3.0, 1e-5, 1.0)
    datas = [prepare_site(s) for s in sites]
    smallest = min(len(d.y_train) for d in datas)
    assert dp.train.batch_size <= smallest - 40  # fits the noisy size a DP site releases
    for d in datas:
        assert 0.2 < float(d.y_train.mean()) < 0.4 and len(d.y_test) >= 100


def test_site_files_warn_about_scaling_and_mark_every_column_for_review(german_app: InitResult) -> None:
    text = (german_app.app_dir / "sites" / "site_0.toml").read_text()
    head, columns = text.split("[schema.columns]\n")
    assert "WARNING" in head and "public reference values" in head and "leak" in head
    lines = columns.split("\n\n")[0].splitlines()
    assert len(lines) == 22 and all("  # review: " in ln for ln in lines)
    assert any("public reference values" in w for w in german_app.warnings)
    assert german_app.next_commands == (
        f"fedcore run {german_app.app_dir}",
        f"fedcore run {german_app.app_dir} --job dp",
    )
    project = tomllib.loads((german_app.app_dir / "pyproject.toml").read_text())
    assert project["project"]["dependencies"] == []
    assert project["tool"]["flwr"]["app"]["components"]["clientapp"] == "fedcore_app:client_app"
    assert project["tool"]["flwr"]["app"]["config"]["set"] == ""


def test_the_default_job_runs_through_flower(heart_csv: Path, tmp_path: Path) -> None:
    result = init_app(heart_csv, tmp_path / "heart", label="num", positive_above=0)
    summary = run_app(result.app_dir, rounds=2, out_dir=tmp_path / "run", baselines=False)
    # measured 0.79 (seed 0); the majority class is 0.54
    assert summary["mean_site_accuracy"] >= 0.7
    assert summary["mean_site_accuracy"] > summary["mean_majority_class_accuracy"] + 0.1


def test_every_site_admits_the_dp_job_and_is_charged(german_app: InitResult, tmp_path: Path) -> None:
    summary = run_app(german_app.app_dir, job="dp", rounds=2, out_dir=tmp_path / "run", baselines=False)
    sites = summary["privacy"]["sites"]
    assert sorted(sites) == ["site_0", "site_1", "site_2"]
    for name, site in sites.items():
        assert site["accepted"], name
        assert 0 < site["epsilon"] <= 3.0 + 0.1, name  # the job's epsilon 3, plus the noisy size


def test_never_overwrites_and_writes_nothing_on_refusal(german_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "app"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"not empty; fedcore init never overwrites"):
        init_app(german_csv, out, label="credit_risk", positive=["2"])
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app"]  # no temporary folder left
    (out / "notes.txt").unlink()
    init_app(german_csv, out, label="credit_risk", positive=["2"])  # an empty folder is fine
    assert (out / "sites" / "site_2.toml").is_file()


def _tiny(tmp_path: Path, rows: list[str], header: str = "a,b,y") -> Path:
    path = tmp_path / "tiny.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"label": "credit_rsk"},
            ConfigError,
            r"--label 'credit_rsk' is not a column \(did you mean 'credit_risk'",
        ),
        ({"label": "credit_risk", "positive": ["3"]}, ConfigError, r"--positive \[3\]: not values.*\[1, 2\]"),
        ({"label": "credit_risk", "positive_above": 2}, ConfigError, r"one class only: all 1000 .*negative"),
        ({"label": "credit_risk", "ids": ["customer"]}, ConfigError, r"--id 'customer' is not a column"),
        ({"label": "purpose"}, ConfigError, r"has 10 values .* say which are positive with --positive"),
        ({"label": "credit_risk", "sites": 1}, ConfigError, r"--sites must be >= 2.*got 1"),
        ({"label": "credit_risk", "sites": 0}, ConfigError, r"--sites must be >= 2.*got 0"),
        ({"label": "credit_risk", "sites": 300}, DataError, r"1000 rows cannot make 300 sites.*--sites 250"),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(
    german_csv: Path, tmp_path: Path, kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        init_app(german_csv, tmp_path / "app", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "app").exists()


def test_unreadable_or_too_small_files_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cannot be read .*check the path"):
        init_app(tmp_path / "missing.csv", tmp_path / "app", label="y")
    (tmp_path / "latin1.csv").write_bytes("a,y\ncaf\xe9,1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"not UTF-8 text.*save it as a UTF-8 CSV"):
        init_app(tmp_path / "latin1.csv", tmp_path / "app", label="y")
    five = _tiny(tmp_path, ["1,x,0", "2,x,1", "3,y,0", "4,y,1", "5,x,0"])
    with pytest.raises(DataError, match=r"5 rows cannot make 3 sites of 4 rows or more; use --sites 2"):
        init_app(five, tmp_path / "app", label="y")
    ragged = _tiny(tmp_path, ["1,x,0", "2,x"])
    with pytest.raises(DataError, match=r"line 3 has 2 fields, the header 3"):
        init_app(ragged, tmp_path / "app", label="y")
    assert not (tmp_path / "app").exists()


def test_a_site_with_one_class_is_named(tmp_path: Path) -> None:
    rows = [f"{i},{'n' if i < 8 else 's'},{int(i >= 8)}" for i in range(12)]
    path = _tiny(tmp_path, rows, header="a,region,y")
    with pytest.raises(DataError, match=r"both classes; not n \(8 rows, 8 complete, 0 positive\)"):
        init_app(path, tmp_path / "app", label="y", site_column="region")


def test_separator_bom_missing_markers_and_types_are_inferred(tmp_path: Path) -> None:
    x = [0.5 * i for i in range(30) if i != 3]
    rows = [
        f"{i};{'?' if i == 3 else 0.5 * i};{'ab'[i % 2]};{'NA' if i == 4 else i % 3};note {i};{i % 2}"
        for i in range(30)
    ]
    path = tmp_path / "semi.csv"
    path.write_bytes(("\ufeffid;x;kind;code;free text;y\r\n" + "\r\n".join(rows) + "\r\n").encode())
    assert read_table(path).header[0] == "id"  # BOM stripped, Windows line ends
    result = init_app(path, tmp_path / "app", label="y", positive=["1"], ids=["id"], sites=2)
    site = load_site(result.app_dir / "sites" / "site_0.toml")
    cols = {c.name: c for c in site.columns}
    assert (cols["id"].type, cols["id"].tag) == ("numeric", "identifier")
    assert cols["x"].type == "numeric"
    assert (cols["x"].center, cols["x"].scale) == (
        float(f"{statistics.fmean(x):.3g}"),
        float(f"{statistics.pstdev(x):.3g}"),
    )
    assert (cols["kind"].type, cols["kind"].levels) == ("categorical", ("a", "b"))
    assert (cols["code"].type, cols["code"].levels) == ("categorical", (0, 1, 2))
    assert cols["free text"].type == "text" and any("free text" in w for w in result.warnings)
    assert (result.app_dir / "data" / "site_0.csv").read_text().startswith("id,x,kind,code,free text,y\n")
    datas = [prepare_site(load_site(p)) for p in load_app(result.app_dir).sites]
    assert datas[0].features == ("x", "x=missing", "kind=b", "code=1", "code=2", "code=missing")
    assert sum(len(d.y_train) + len(d.y_test) for d in datas) == 30  # '?' and 'NA': kept, indicated


def test_site_column_names_sites_and_becomes_an_identifier(heart_csv: Path, tmp_path: Path) -> None:
    header, *lines = heart_csv.read_text().splitlines()
    wards = ("North Wing", "south/east", "Ünit 7")
    path = _tiny(
        tmp_path, [f'{ln},"{wards[i % 3]}"' for i, ln in enumerate(lines)], header=header + ",ward name"
    )
    result = init_app(path, tmp_path / "app", label="num", positive_above=0, site_column="ward name")
    assert result.sites == {"north_wing": 101, "south_east": 101, "unit_7": 101}
    sites = [load_site(p) for p in load_app(result.app_dir).sites]
    assert [s.data_path.name for s in sites] == ["north_wing.csv", "south_east.csv", "unit_7.csv"]
    for site in sites:
        assert {c.name: c.tag for c in site.columns}["ward name"] == "identifier"
        assert "ward name" not in [c.name for c in site.feature_columns]
        assert len(prepare_site(site).y_train) >= 60


def test_the_init_command_parses_and_prints_the_next_steps(
    german_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="fedcore")
    sub = parser.add_subparsers(dest="command", required=True)
    add_init_command(sub)
    out = tmp_path / "cli app"
    args = parser.parse_args(
        [
            "init",
            str(german_csv),
            "--out",
            str(out),
            "--label",
            "credit_risk",
            "--id",
            "applicant_id",
            "--sites",
            "4",
        ]
    )
    assert args.func(args) == 0
    shown = capsys.readouterr()
    assert f"fedcore run '{out}' --job dp" in shown.out and "site site_3: 250 rows" in shown.out
    assert "public reference values" in shown.err and "2 taken as the positive class" in shown.err
    with pytest.raises(SystemExit):
        parser.parse_args(
            ["init", "x.csv", "--out", "o", "--label", "y", "--positive", "1", "--positive-above", "0"]
        )
    assert all(action.help for action in sub.choices["init"]._actions)  # help text on every option


def _hospitals_csv(shared_data: Path, path: Path) -> Path:
    rows = [f"hospital,{HEART_COLUMNS}"]
    for name in ("cleveland", "hungarian", "switzerland", "va"):
        text = (shared_data / "heart_disease" / f"processed.{name}.data").read_text()
        rows += [f"{name},{line}" for line in text.splitlines() if line.strip()]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_empty_values_keep_their_rows_with_a_missing_input_and_each_site_says_so(
    tmp_path: Path, shared_data: Path
) -> None:
    """The four hospitals in one file: slope, ca and thal are empty in most rows, and chol, fbs and
    others in some. Every feature with a gap is kept with indicate_missing, so no row is dropped (the
    published protocol drops columns and rows: 46 of Switzerland's 123 rows are left)."""
    csv = _hospitals_csv(shared_data, tmp_path / "heart.csv")
    result = init_app(csv, tmp_path / "heart", label="num", positive_above=0, site_column="hospital")
    gaps = ("trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak", "slope", "ca", "thal")
    assert result.indicated_columns == gaps
    site = load_site(result.app_dir / "sites" / "switzerland.toml")
    assert [c.name for c in site.columns if c.indicate_missing] == list(gaps) and not site.drop
    assert "90 empty: kept, with input fbs=missing" in site.path.read_text()  # in the file
    assert result.rows["cleveland"] == "303 rows, all kept (6 with an empty value, indicated)"
    assert result.rows["switzerland"] == "123 rows, all kept (123 with an empty value, indicated)"
    datas = [prepare_site(load_site(p)) for p in sorted((result.app_dir / "sites").glob("*.toml"))]
    assert [len(d.y_train) + len(d.y_test) for d in datas] == [303, 294, 123, 200]
    assert "ca=missing" in datas[0].features and all(np.isfinite(d.x_train).all() for d in datas)
    # Switzerland records cholesterol as 0: init says so, once, on the console and on the column's line
    zeros = [w for w in result.warnings if "are 0" in w]
    assert zeros == [
        "column 'chol': 172 values are 0 while the others lie in 85-603: if 0 means not measured, empty "
        "those cells (then they are kept as chol=missing)"
    ]
    assert "172 values are 0" in site.path.read_text()


def test_zeros_are_flagged_only_where_they_look_like_a_not_measured_code() -> None:
    from fedcore.appinit.infer import zero_coded

    rng = np.random.default_rng(0)
    chol = np.r_[np.zeros(20), rng.normal(240, 50, 100).clip(85, 600)]
    assert "20 values are 0" in zero_coded("chol", chol)
    quiet = {
        "a count (0 pregnancies beside 1-17)": np.r_[np.zeros(20), rng.integers(1, 18, 100)],
        "a rate, mostly 0": np.r_[np.zeros(150), rng.uniform(0.2, 1, 50)],
        "a signed value (0 among negatives)": np.r_[np.zeros(20), rng.normal(1, 1, 100)],
        "four zeros": np.r_[np.zeros(4), rng.normal(240, 50, 100).clip(85, 600)],
        "zeros the majority": np.r_[np.zeros(120), rng.normal(240, 50, 100).clip(85, 600)],
    }
    for case, x in quiet.items():
        assert zero_coded("x", x) == "", case


def test_bounds_are_the_file_range_rounded_outward_to_coarse_values() -> None:
    from fedcore.appinit.infer import coarse_bounds

    cases = {(28, 77): (20, 80), (71, 202): (50, 250), (250, 18424): (0, 20000), (0, 1): (0, 1),
             (-2.6, 6.2): (-3, 7), (0.001, 0.0123): (0, 0.015)}  # fmt: skip
    for (lo, hi), want in cases.items():
        got = coarse_bounds(lo, hi)
        assert got == want and got[0] <= lo and got[1] >= hi, (lo, hi, got)


def test_a_text_label_declared_numeric_gets_the_positive_class_advice(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x,default\n1,no\n2,yes\n3,no\n4,yes\n5,no\n6,yes\n")
    (tmp_path / "a.toml").write_text(
        '[site]\nname = "a"\n\n[data]\npath = "a.csv"\nheader = true\n\n[schema]\nlabel = "default"\n\n'
        '[schema.columns]\nx = "numeric"\ndefault = "numeric"\n\n[privacy]\nbudget_epsilon = 1.0\n'
    )
    with pytest.raises(DataError, match=r'declare it default = "text" .* positive = \["yes"\]'):
        prepare_site(load_site(tmp_path / "a.toml"))
