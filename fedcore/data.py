"""Tabular loading with schema validation, and per-site preprocessing fitted on training rows only.

No statistic crosses a site boundary: ``prepare_site`` sees one site's rows and nothing else.

A newcomer's own CSV is read as it is: a UTF-8 byte-order mark is ignored, the separator detected
(``[data] separator = "auto"``), header columns matched to the schema by name, in any order. Errors
name the file, the line (1-based, as an editor shows it, header counted), the column and the fix.
"""

from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from fedcore.config import SiteConfig
from fedcore.errors import DataError, SchemaError

__all__ = [
    "SEPARATORS",
    "EncodedSite",
    "SiteData",
    "detect_separator",
    "encode_site",
    "feature_names",
    "load_table",
    "prepare_site",
]

F32 = NDArray[np.float32]
SEPARATORS = (",", ";", "\t", "|")  # what separator = "auto" chooses from
_SNIFF_LINES = 20
Row = tuple[int, list[str]]  # (line number as an editor shows it, fields)


@dataclass(frozen=True)
class SiteData:
    """One site's model-ready arrays (float32) and the names of the feature columns.

    ``dropped_rows``: rows left out because a used column had no value (``incomplete_rows = "drop"``).
    """

    site: str
    x_train: F32
    y_train: F32
    x_test: F32
    y_test: F32
    features: tuple[str, ...]
    test_frame: pd.DataFrame  # the test rows before encoding (identifiers kept, for per-day metrics)
    dropped_rows: int = 0
    units_train: NDArray[np.int64] | None = (
        None  # customer code 0..U-1 per training row ([privacy] unit_column)
    )


def _read_text(site: SiteConfig) -> str:
    path = site.data_path
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except FileNotFoundError as err:
        raise DataError(
            f"site {site.name!r}: data file {path} not found; fix [data] path in {site.path}"
        ) from err
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: is not UTF-8 text ({err}); save it as a UTF-8 CSV file") from err
    if not text.strip():
        raise DataError(f"{path}: the file is empty; point [data] path at the site's data")
    return text


def detect_separator(text: str, *, width: int | None, source: Path, fix: str) -> str:
    """The separator of ``SEPARATORS`` a CSV's first lines use.

    The one that splits them into ``width`` fields (the declared columns, when known); failing that,
    the one that splits every line into the same number (> 1) of fields (the most fields, if several
    do), so that the header or width check then names the difference. ``fix`` ends the error.
    """
    lines = [line for line in text.splitlines() if line.strip()][:_SNIFF_LINES]
    counts = {s: sorted({len(r) for r in csv.reader(lines, delimiter=s)}) for s in SEPARATORS}
    fits = [s for s, c in counts.items() if width in c]
    steady = sorted((s for s, c in counts.items() if len(c) == 1 and c[0] > 1), key=lambda s: -counts[s][0])
    if len(fits) == 1 or (
        not fits and steady and (len(steady) == 1 or counts[steady[0]] > counts[steady[1]])
    ):
        return (fits or steady)[0]
    if len(fits) > 1:
        why = f"lines split into the {width} declared columns with {' and with '.join(map(repr, fits))}"
    else:
        why = f"no separator among {', '.join(map(repr, SEPARATORS))} splits them into columns evenly"
    seen = "; ".join(f"{s!r}: {c} fields" for s, c in counts.items())
    raise DataError(
        f"{source}: cannot detect the separator from the first {len(lines)} lines: {why} ({seen}); {fix}"
    )


def _read_rows(site: SiteConfig) -> list[Row]:
    """The non-empty rows of the site's file, each with the line it starts on."""
    text = _read_text(site)
    rows: list[Row] = []
    try:
        fix = f'set [data] separator in {site.path} to the file\'s separator, e.g. separator = ";"'
        sep = (
            site.separator
            if site.separator != "auto"
            else detect_separator(text, width=len(site.columns), source=site.data_path, fix=fix)
        )
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
        start = 1
        for fields in reader:
            if fields:  # blank lines are skipped, but still counted
                rows.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as err:
        raise DataError(f"{site.data_path}: cannot be read as CSV ({err}); is it a text CSV file?") from err
    return rows


def _check_header(site: SiteConfig, header: list[str]) -> list[str]:
    """The header's column names (spaces around them ignored), once they match the schema's."""
    declared = [c.name for c in site.columns]
    got = [h.strip() for h in header]
    missing = [c for c in declared if c not in got]
    extra = [c for c in got if c not in declared]
    if missing or extra:
        raise SchemaError(
            f"{site.data_path}: columns do not match the schema in {site.path}: "
            f"missing {missing}, extra {extra}. Add the missing columns to the file, or declare "
            'the extra ones in [schema.columns] (tag = "identifier" keeps them out of the model)'
        )
    repeated = sorted({h for h in got if got.count(h) > 1})
    if repeated:
        raise SchemaError(
            f"{site.data_path}: the header names the columns {repeated} more than once; "
            "give every column one header name"
        )
    return got


def _check_widths(site: SiteConfig, rows: list[Row], names: list[str]) -> None:
    for line, fields in rows:
        if len(fields) != len(names):
            raise DataError(
                f"{site.data_path}: line {line} has {len(fields)} fields, expected "
                f"{len(names)} ({', '.join(names)}); fix or remove that line"
            )


def load_table(site: SiteConfig) -> pd.DataFrame:
    """Read the site's CSV, check every row against the schema, and return typed columns.

    The frame has the schema's columns in schema order (a file with a header may order them as it
    likes) and is indexed by line number in the file (1-based, as an editor shows it). Raises
    ``SchemaError``/``DataError`` naming the file, line, column and value, with the fix.
    """
    rows = _read_rows(site)
    names = [c.name for c in site.columns]
    if site.header:
        names = _check_header(site, rows[0][1])
        rows = rows[1:]
    _check_widths(site, rows, names)
    frame = pd.DataFrame([f for _, f in rows], columns=names, index=[n for n, _ in rows])
    frame = frame[[c.name for c in site.columns]]
    for col in site.columns:
        ctype = col.type
        if ctype == "categorical" and not all(isinstance(v, int | float) for v in col.levels):
            ctype = "text"  # string levels (e.g. "A11") are compared as strings
        frame[col.name] = _typed(frame[col.name], col.name, ctype, site)
    return frame


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _typed(values: pd.Series, name: str, ctype: str, site: SiteConfig) -> pd.Series:
    """A column as numbers (numeric, categorical with number levels) or stripped text; missing is NaN.

    A number must be finite: ``inf``, ``-inf``, ``Infinity`` or ``nan`` in the file is refused, so
    that it never reaches a model or a standardisation as a value.
    """
    stripped = values.str.strip()
    missing = stripped.isin(site.missing)
    if ctype not in ("numeric", "categorical"):
        return stripped.where(~missing, None)
    numbers = pd.to_numeric(stripped.where(~missing, None), errors="coerce")
    bad = ~np.isfinite(numbers.to_numpy(np.float64)) & ~missing.to_numpy()
    if bad.any():
        at = int(np.flatnonzero(bad)[0])
        what = "is infinite" if np.isinf(numbers.iloc[at]) else "is not a number"
        if name == site.label and not np.isinf(numbers.iloc[at]):  # a yes/no label: text, not a gap
            words = sorted({str(v) for v in stripped[bad]})
            raise DataError(
                f"{site.data_path}: the label {name!r} holds text ({', '.join(map(repr, words[:5]))}, "
                f'first on line {values.index[at]}); declare it {name} = "text" in [schema.columns] and '
                f"name the values of its positive class in [schema], e.g. positive = [{_toml_str(words[-1])}]"
            )
        raise DataError(
            f"{site.data_path}: line {values.index[at]}, column {name!r}: {values.iloc[at]!r} {what} "
            f"(schema type {ctype}, which needs a finite number); fix the value, or mark it missing "
            f"with one of [data] missing {list(site.missing)}"
        )
    return numbers


def _complete_rows(frame: pd.DataFrame, site: SiteConfig) -> tuple[pd.DataFrame, int]:
    """The rows with a value in every used column (renumbered from 0), and how many were left out.

    ``[data] incomplete_rows = "error"`` refuses the file instead, naming the first such line.
    """
    used = [c.name for c in site.feature_columns if not c.indicate_missing]
    used += [site.label] + ([site.event] if site.event else [])
    if site.policy.unit_column is not None:  # a row without a customer id cannot be grouped
        used.append(site.policy.unit_column)
    gaps = frame[used].isna()
    incomplete = gaps.any(axis=1)
    if site.incomplete_rows == "error" and incomplete.any():
        line = incomplete.idxmax()
        column = used[int(np.argmax(gaps.loc[line].to_numpy()))]
        raise DataError(
            f"{site.data_path}: line {line}, column {column!r} has no value (it is one of "
            f'[data] missing {list(site.missing)}) and {site.path} sets incomplete_rows = "error"; '
            'fill in the value, or set incomplete_rows = "drop" to leave such rows out'
        )
    kept = frame[~incomplete].reset_index(drop=True)
    if len(kept) < 4:
        raise SchemaError(
            f"{site.data_path}: only {len(kept)} complete rows after dropping rows with missing "
            f"values in {used}; a site needs at least 4"
        )
    return kept, len(frame) - len(kept)


def _labels(frame: pd.DataFrame, site: SiteConfig) -> F32:
    """The label array of the task the site's labels serve (``[schema] target``, ``fedcore.tasks``)."""
    from fedcore.tasks import task_class

    return task_class(site.target).read_labels(frame, site)


def feature_names(site: SiteConfig) -> tuple[str, ...]:
    """Model input names: numeric columns as is, categoricals one-hot minus their first level, then
    ``NAME=missing`` for a column with ``indicate_missing``."""
    out: list[str] = []
    for c in site.feature_columns:
        out += [f"{c.name}={lv}" for lv in c.levels[1:]] if c.type == "categorical" else [c.name]
        out += [f"{c.name}=missing"] if c.indicate_missing else []
    return tuple(out)


def _encode(frame: pd.DataFrame, site: SiteConfig) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """The model inputs, and which of them are numeric columns without declared constants.

    An empty value of an ``indicate_missing`` column is 1 in its ``NAME=missing`` input; a categorical
    one is then no level (all its one-hot inputs 0), a numeric one NaN until ``prepare_site``
    standardises it and sets it to 0 (its center)."""
    parts: list[NDArray[np.float64]] = []
    fitted: list[bool] = []
    legacy = all(c.center is None for c in site.feature_columns)  # as published protocols: all fitted
    for c in site.feature_columns:
        col = frame[c.name]
        if c.type == "categorical":
            levels = [lv if isinstance(lv, str) else float(lv) for lv in c.levels]
            unknown = sorted(map(str, set(col.dropna()) - set(levels)))
            if unknown:
                raise DataError(
                    f"{site.data_path}: column {c.name!r} has values {unknown} outside the "
                    f"declared levels {list(c.levels)}; add them to levels in {site.path}"
                )
            parts += [(col == lv).to_numpy(np.float64)[:, None] for lv in levels[1:]]
            fitted += [legacy] * (len(levels) - 1)
        elif c.center is not None and c.scale is not None:
            parts.append((col.to_numpy(np.float64)[:, None] - c.center) / c.scale)
            fitted.append(False)
        else:
            parts.append(col.to_numpy(np.float64)[:, None])
            fitted.append(True)
        if c.indicate_missing:
            parts.append(col.isna().to_numpy(np.float64)[:, None])
            fitted.append(legacy)
    return np.hstack(parts), np.asarray(fitted, dtype=bool)


def _split(
    frame: pd.DataFrame, y: NDArray[np.float32], site: SiteConfig
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    from fedcore.tasks import task_class

    idx = np.arange(len(frame))
    if site.split_column is not None:
        test = frame[site.split_column].to_numpy(np.float64) >= float(site.split_at or 0)
        return idx[~test], idx[test]
    strata = task_class(site.target).stratify(y) if site.stratify else None
    stratify = strata if strata is not None and np.bincount(strata).min() >= 3 else None
    from sklearn.model_selection import train_test_split  # here: `fedcore run` reads data before it loads

    train, test = train_test_split(
        idx, test_size=site.test_fraction, random_state=site.split_seed, stratify=stratify
    )
    return np.asarray(train), np.asarray(test)


@dataclass(frozen=True)
class EncodedSite:
    """One site's rows encoded but not yet standardised (``encode_site``): the inputs ``x``, which
    of them a site without constants standardises (``fitted``), the labels and the split."""

    frame: pd.DataFrame
    x: NDArray[np.float64]
    fitted: NDArray[np.bool_]
    y: F32
    train: NDArray[np.intp]
    test: NDArray[np.intp]
    dropped: int


def encode_site(site: SiteConfig) -> EncodedSite:
    """Load, clean (``[data] incomplete_rows``), label (``[schema] target``), encode and split one site."""
    frame, dropped = _complete_rows(load_table(site), site)
    y = _labels(frame, site)
    x, fitted = _encode(frame, site)
    train, test = _split(frame, y, site)
    return EncodedSite(frame, x, fitted, y, train, test, dropped)


def prepare_site(site: SiteConfig) -> SiteData:
    """``encode_site``, then standardise: the model-ready arrays of one site.

    A numeric feature with declared ``center``/``scale`` (public constants) is standardised with
    them; one without is standardised with this site's training rows' mean and std (refused under
    DP: those are statistics of private rows). One-hot columns stay 0/1, except at a site that
    declares no constants at all, where every input is standardised by its rows (as the published
    per-site protocols do). An empty value of an ``indicate_missing`` column becomes 0 after
    standardising: its center, or the mean of the site's training rows where they set the scale.
    """
    enc = encode_site(site)
    frame, dropped, y, x, fitted, train, test = (
        enc.frame, enc.dropped, enc.y, enc.x.copy(), enc.fitted, enc.train, enc.test
    )  # fmt: skip
    if fitted.any():
        with np.errstate(invalid="ignore"), warnings.catch_warnings():  # a column empty in every row
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nan_to_num(np.nanmean(x[train][:, fitted], axis=0))
            std = np.nan_to_num(np.nanstd(x[train][:, fitted], axis=0))
        std[std == 0] = 1.0
        x[:, fitted] = (x[:, fitted] - mean) / std
    x[np.isnan(x)] = 0.0  # an empty indicate_missing value: its center (other gaps dropped their row)
    return SiteData(
        site=site.name,
        x_train=x[train].astype(np.float32),
        y_train=y[train],
        x_test=x[test].astype(np.float32),
        y_test=y[test],
        features=feature_names(site),
        test_frame=frame.iloc[test].reset_index(drop=True),
        dropped_rows=dropped,
        units_train=_units(frame.iloc[train], site),
    )


def _units(train: pd.DataFrame, site: SiteConfig) -> NDArray[np.int64] | None:
    """Each training row's customer as a code ``0..U-1`` (``[privacy] unit_column``; None without one)."""
    column = site.policy.unit_column
    if column is None:
        return None
    codes, _ = pd.factorize(train[column], sort=True)
    return np.asarray(codes, dtype=np.int64)
