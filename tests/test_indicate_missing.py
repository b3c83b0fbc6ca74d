"""``indicate_missing``: an empty value keeps its row; the model gets a ``NAME=missing`` input and the
value its center (numeric) or no level (categorical). Sites must declare it alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcore.clients.runtime import schema_fingerprint
from fedcore.config import load_site
from fedcore.data import prepare_site
from fedcore.errors import ConfigError, SchemaError
from fedcore.harness.app import check_sites_agree

ROWS = [  # x, c, z, y: x empty on rows 0-3, c empty on rows 4-5, z empty on row 6 (dropped)
    *[("", "ab"[i % 2], str(i), str(i % 2)) for i in range(4)],
    *[(str(10 + i), "", str(i), str(i % 2)) for i in range(4, 6)],
    ("13", "a", "", "1"),
    *[(str(10 + i % 7), "abc"[i % 3], str(i), str(i % 2)) for i in range(7, 40)],
]


def _site(tmp_path: Path, *, x: str, c: str = "indicate_missing = true", name: str = "s") -> Path:
    data = tmp_path / f"{name}.csv"
    data.write_text("x,c,z,y\n" + "\n".join(",".join(r) for r in ROWS) + "\n")
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'[site]\nname = "{name}"\n[data]\npath = "{data.name}"\n'
        '[schema]\nlabel = "y"\npositive = [1]\n[schema.columns]\n'
        f'x = {{ type = "numeric"{", " if x else ""}{x} }}\n'
        f'c = {{ type = "categorical", levels = ["a", "b", "c"]{", " if c else ""}{c} }}\n'
        'z = { type = "numeric", center = 20.0, scale = 10.0 }\ny = "numeric"\n'
        "[split]\ntest_fraction = 0.25\nseed = 1\n"
    )
    return path


def _all_rows(path: Path) -> tuple[tuple[str, ...], np.ndarray, int]:
    d = prepare_site(load_site(path))
    return d.features, np.vstack([d.x_train, d.x_test]), d.dropped_rows


def test_an_empty_value_keeps_its_row_at_its_center_with_a_missing_input(tmp_path: Path) -> None:
    features, x, dropped = _all_rows(_site(tmp_path, x="center = 10.0, scale = 2.0, indicate_missing = true"))
    assert features == ("x", "x=missing", "c=b", "c=c", "c=missing", "z")
    assert dropped == 1 and len(x) == len(ROWS) - 1  # only the row with z empty (z not indicated)
    assert np.isfinite(x).all()
    empty_x = x[:, 1] == 1
    assert empty_x.sum() == 4 and (x[empty_x, 0] == 0).all()  # its center: 0 after standardising
    observed = sorted({float(r[0]) for r in ROWS if r[0] and r[2]})
    assert sorted(set(x[~empty_x, 0].round(6))) == [round((v - 10) / 2, 6) for v in observed]
    empty_c = x[:, 4] == 1
    assert empty_c.sum() == 2 and (x[empty_c, 2:4] == 0).all()  # no level, told apart from "a"
    level_a = (x[:, 2] == 0) & (x[:, 3] == 0) & ~empty_c
    assert level_a.sum() > 0 and (x[level_a, 4] == 0).all()


def test_a_numeric_without_constants_is_filled_with_its_training_mean(tmp_path: Path) -> None:
    d = prepare_site(load_site(_site(tmp_path, x="indicate_missing = true")))
    seen = d.x_train[d.x_train[:, 1] == 0, 0]  # standardised by the observed training values
    assert abs(float(seen.mean())) < 1e-5 and abs(float(seen.std()) - 1) < 1e-5
    assert (d.x_train[d.x_train[:, 1] == 1, 0] == 0).all()  # the empty ones at that mean


def test_without_it_the_same_rows_are_dropped(tmp_path: Path) -> None:
    features, _, dropped = _all_rows(_site(tmp_path, x="center = 10.0, scale = 2.0", c=""))
    assert features == ("x", "c=b", "c=c", "z") and dropped == 7


def test_sites_must_declare_it_alike(tmp_path: Path) -> None:
    a = load_site(_site(tmp_path, x="center = 10.0, scale = 2.0, indicate_missing = true", name="a"))
    b = load_site(_site(tmp_path, x="center = 10.0, scale = 2.0", name="b"))
    assert schema_fingerprint(a) != schema_fingerprint(b)
    with pytest.raises(SchemaError, match=r"site 'b' .* differing columns .*indicate_missing"):
        check_sites_agree([a, b])
    plain = next(c for c in b.columns if c.name == "x")
    assert plain.signature == ("x", "numeric", ())  # a site without it keeps its fingerprint


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('z = { type = "numeric", tag = "identifier", indicate_missing = true }', "is for feature columns"),
        ('z = { type = "text", indicate_missing = true }', "is for feature columns"),
        ('z = { type = "numeric", indicate_missing = "yes" }', "indicate_missing"),
        ('y = { type = "numeric", indicate_missing = true }', "'y' is the label, not a feature"),
    ],
)
def test_it_is_refused_where_it_means_nothing(tmp_path: Path, line: str, problem: str) -> None:
    path = _site(tmp_path, x="indicate_missing = true")
    key = line.split(" = ", 1)[0]
    text = "\n".join(line if ln.startswith(f"{key} = ") else ln for ln in path.read_text().splitlines())
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=problem) as err:
        load_site(path)
    assert "Traceback" not in str(err.value)
