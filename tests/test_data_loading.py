"""A newcomer's own CSV is read as it is (byte-order mark, separator, column order, header spaces),
and values a model cannot use (infinite, incomplete rows) fail naming the file, line and column."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from fedcore.config import load_site
from fedcore.data import SiteData, prepare_site
from fedcore.errors import ConfigError, DataError, SchemaError

SITES = Path(__file__).resolve().parents[1] / "examples" / "medical" / "sites"
NAMES = [
    *("age", "sex", "cp", "trestbps", "chol", "fbs", "restecg"),
    *("thalach", "exang", "oldpeak", "slope", "ca", "thal", "num"),
]
GOOD = "63.0,1.0,1.0,145.0,233.0,1.0,2.0,150.0,0.0,2.3,3.0,0.0,6.0,0\n"
SICK = "67.0,1.0,4.0,160.0,286.0,0.0,2.0,108.0,1.0,1.5,2.0,3.0,3.0,2\n"


def _site(
    tmp_path: Path, data: Path, *, header: bool = False, data_keys: str = "", name: str = "cleveland"
) -> Path:
    """A copy of an example site file, changed only by its data path, header and extra [data] keys."""
    text = (SITES / f"{name}.toml").read_text()
    lines = [
        f'path = "{data.as_posix()}"' if line.startswith("path = ") else line for line in text.splitlines()
    ]
    text = "\n".join(lines) + "\n"
    if header:
        text = text.replace("header = false", "header = true")
    site = tmp_path / f"{name}.toml"
    site.write_text(text.replace("[data]\n", "[data]\n" + data_keys, 1))
    return site


def _write(tmp_path: Path, text: str) -> Path:
    data = tmp_path / "data.csv"
    data.write_text(text, encoding="utf-8")
    return data


@pytest.fixture
def cleveland(shared_data: Path, tmp_path: Path) -> SiteData:
    """The example's Cleveland site, as published (the UCI file: no header, commas)."""
    original = shared_data / "heart_disease" / "processed.cleveland.data"
    return prepare_site(load_site(_site(tmp_path, original)))


def _rewrite(shared_data: Path, tmp_path: Path, sep: str, *, newline: str = "\n") -> Path:
    """Cleveland with a BOM, a header (spaces around names), ``sep`` and the columns reordered."""
    with (shared_data / "heart_disease" / "processed.cleveland.data").open(newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    order = [13, 4, 0, 9, 2, 11, 1, 7, 12, 3, 6, 10, 5, 8]  # label first, then shuffled
    lines = [sep.join(f" {NAMES[i]} " for i in order)] + [sep.join(r[i] for i in order) for r in rows]
    data = tmp_path / "mine.csv"
    data.write_bytes(b"\xef\xbb\xbf" + newline.join(lines).encode() + newline.encode())
    return data


@pytest.mark.parametrize(
    ("sep", "data_keys", "newline"),
    [
        (";", "", "\n"),  # separator absent: "auto" is the default
        ("\t", 'separator = "auto"\n', "\r\n"),
        (";", 'separator = ";"\n', "\n"),
        ("|", "", "\r\n"),
    ],
    ids=["semicolon-default", "tab-auto-crlf", "semicolon-explicit", "pipe-default"],
)
def test_own_csv_gives_the_same_arrays_as_the_published_file(
    shared_data: Path, tmp_path: Path, cleveland: SiteData, sep: str, data_keys: str, newline: str
) -> None:
    mine_dir = tmp_path / "mine"
    mine_dir.mkdir()
    data = _rewrite(shared_data, mine_dir, sep, newline=newline)
    mine = prepare_site(load_site(_site(mine_dir, data, header=True, data_keys=data_keys)))
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(mine, field), getattr(cleveland, field))
    assert mine.features == cleveland.features
    assert list(mine.test_frame.columns) == NAMES
    assert mine.dropped_rows == cleveland.dropped_rows == 0


def test_single_column_file_asks_for_the_separator(tmp_path: Path) -> None:
    site = _site(tmp_path, _write(tmp_path, "63.0\n67.0\n41.0\n"))
    with pytest.raises(
        DataError, match=r"cannot detect the separator .*set \[data\] separator in .*cleveland\.toml"
    ):
        prepare_site(load_site(site))


def test_mixed_separators_are_ambiguous(tmp_path: Path) -> None:
    site = _site(tmp_path, _write(tmp_path, (GOOD + SICK.replace(",", ";")) * 3))
    with pytest.raises(DataError, match=r"data\.csv: cannot detect the separator .* with ',' and with ';'"):
        prepare_site(load_site(site))


def test_explicit_separator_must_be_one_character(tmp_path: Path) -> None:
    site = _site(tmp_path, _write(tmp_path, GOOD), data_keys='separator = ";;"\n')
    with pytest.raises(ConfigError, match=r"\[data\] separator: must be one character .* got ';;'"):
        load_site(site)


@pytest.mark.parametrize("text", ["inf", "-inf", "Infinity", " INF ", "1e999"])
def test_infinite_number_is_refused_naming_line_and_column(tmp_path: Path, text: str) -> None:
    site = _site(tmp_path, _write(tmp_path, GOOD * 3 + GOOD.replace("233.0", text) + SICK * 3))
    with pytest.raises(DataError, match=rf"data\.csv: line 4, column 'chol': '{text}' is infinite") as err:
        prepare_site(load_site(site))
    assert "mark it missing with one of [data] missing ['?']" in str(err.value)


def test_nan_text_and_infinite_category_are_refused(tmp_path: Path) -> None:
    site = _site(tmp_path, _write(tmp_path, GOOD * 3 + GOOD.replace("2.3", "nan") + SICK * 3))
    with pytest.raises(DataError, match=r"line 4, column 'oldpeak': 'nan' is not a number"):
        prepare_site(load_site(site))
    site = _site(tmp_path, _write(tmp_path, GOOD * 3 + SICK.replace(",4.0,", ",inf,") + SICK * 3))
    with pytest.raises(DataError, match=r"line 4, column 'cp': 'inf' is infinite \(schema type categorical"):
        prepare_site(load_site(site))


def test_line_numbers_count_the_header_and_blank_lines(tmp_path: Path) -> None:
    rows = ",".join(NAMES) + "\n" + GOOD + "\n" + GOOD * 2 + GOOD.replace("233.0", "-inf") + SICK * 3
    site = _site(tmp_path, _write(tmp_path, rows), header=True)
    with pytest.raises(DataError, match=r"line 6, column 'chol': '-inf' is infinite"):
        prepare_site(load_site(site))


INCOMPLETE = GOOD * 3 + GOOD.replace("233.0", "?") + SICK * 3 + SICK.replace("108.0", "?") + SICK


def test_incomplete_rows_are_dropped_and_counted_by_default(tmp_path: Path) -> None:
    data = prepare_site(load_site(_site(tmp_path, _write(tmp_path, INCOMPLETE))))
    assert data.dropped_rows == 2
    assert len(data.y_train) + len(data.y_test) == 7


def test_incomplete_rows_error_names_the_first_line_and_column(tmp_path: Path) -> None:
    site = _site(tmp_path, _write(tmp_path, INCOMPLETE), data_keys='incomplete_rows = "error"\n')
    with pytest.raises(DataError, match=r"line 4, column 'chol' has no value .*incomplete_rows = \"drop\""):
        prepare_site(load_site(site))


def test_missing_values_in_dropped_columns_do_not_make_a_row_incomplete(tmp_path: Path) -> None:
    rows = GOOD.replace(",6.0,", ",?,") + GOOD * 3 + SICK * 4  # thal is dropped by the schema
    site = _site(tmp_path, _write(tmp_path, rows), data_keys='incomplete_rows = "error"\n')
    assert prepare_site(load_site(site)).dropped_rows == 0


def test_hungary_drops_its_incomplete_rows(shared_data: Path, tmp_path: Path) -> None:
    original = shared_data / "heart_disease" / "processed.hungarian.data"
    data = prepare_site(load_site(_site(tmp_path, original, name="hungary")))
    assert data.dropped_rows == 294 - 261  # the published protocol keeps 261 of 294 rows
    strict = _site(tmp_path, original, name="hungary", data_keys='incomplete_rows = "error"\n')
    with pytest.raises(DataError, match=r"processed\.hungarian\.data: line 3, column 'chol' has no value"):
        prepare_site(load_site(strict))


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [("seperator", "separator"), ("incomplete_row", "incomplete_rows"), ("headers", "header")],
)
def test_unknown_data_key_is_refused_with_a_suggestion(tmp_path: Path, key: str, suggestion: str) -> None:
    site = _site(tmp_path, _write(tmp_path, GOOD), data_keys=f'{key} = ";"\n')
    with pytest.raises(
        ConfigError, match=rf"\[data\]: unknown key '{key}' \(did you mean '{suggestion}'\?\)"
    ):
        load_site(site)


def test_incomplete_rows_lists_its_choices(tmp_path: Path) -> None:
    site = _site(tmp_path, _write(tmp_path, GOOD), data_keys='incomplete_rows = "skip"\n')
    with pytest.raises(ConfigError, match=r"incomplete_rows: must be one of 'drop', 'error', got 'skip'"):
        load_site(site)


def test_extra_and_repeated_header_columns_are_named(tmp_path: Path) -> None:
    extra = ";".join(["id", *NAMES]) + "\n" + ("7;" + GOOD.replace(",", ";")) * 4
    site = _site(tmp_path, _write(tmp_path, extra), header=True)
    with pytest.raises(SchemaError, match=r"missing \[\], extra \['id'\]"):
        prepare_site(load_site(site))
    repeated = ",".join([*NAMES, " age"]) + "\n" + GOOD.replace("\n", ",63.0\n") * 4
    site = _site(tmp_path, _write(tmp_path, repeated), header=True)
    with pytest.raises(SchemaError, match=r"names the columns \['age'\] more than once"):
        prepare_site(load_site(site))
