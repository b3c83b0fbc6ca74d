"""Tabular loading with schema validation, and per-site preprocessing fitted on training rows only.

No statistic crosses a site boundary: ``prepare_site`` sees one site's rows and nothing else.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.model_selection import train_test_split

from fedcore.config import SiteConfig
from fedcore.errors import DataError, SchemaError

__all__ = ["SiteData", "feature_names", "load_table", "prepare_site"]

F32 = NDArray[np.float32]


@dataclass(frozen=True)
class SiteData:
    """One site's model-ready arrays (float32) and the names of the feature columns."""

    site: str
    x_train: F32
    y_train: F32
    x_test: F32
    y_test: F32
    features: tuple[str, ...]
    test_frame: pd.DataFrame  # the test rows before encoding (identifiers kept, for per-day metrics)


def _read_rows(site: SiteConfig) -> list[list[str]]:
    path = site.data_path
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f, delimiter=site.separator) if r]
    except FileNotFoundError as err:
        raise DataError(
            f"site {site.name!r}: data file {path} not found; fix [data] path in {site.path}"
        ) from err
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot be read as CSV ({err}); is it a text CSV file?") from err
    if not rows:
        raise DataError(f"{path}: the file is empty; point [data] path at the site's data")
    return rows


def _check_header(site: SiteConfig, header: list[str]) -> None:
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
    if got != declared:
        raise SchemaError(
            f"{site.data_path}: column order {got} differs from [schema.columns] {declared}; "
            "list the columns in the file's order"
        )


def load_table(site: SiteConfig) -> pd.DataFrame:
    """Read the site's CSV, check every row against the schema, and return typed columns.

    Raises ``SchemaError``/``DataError`` naming the file, row (1-based, as an editor shows it),
    column and value, with the fix.
    """
    rows = _read_rows(site)
    first_data_line = 1
    if site.header:
        _check_header(site, rows[0])
        rows, first_data_line = rows[1:], 2
    width = len(site.columns)
    for i, r in enumerate(rows):
        if len(r) != width:
            raise DataError(
                f"{site.data_path}: line {i + first_data_line} has {len(r)} fields, expected "
                f"{width} ({', '.join(c.name for c in site.columns)}); fix or remove that line"
            )
    frame = pd.DataFrame(rows, columns=[c.name for c in site.columns])
    for col in site.columns:
        ctype = col.type
        if ctype == "categorical" and not all(isinstance(v, int | float) for v in col.levels):
            ctype = "text"  # string levels (e.g. "A11") are compared as strings
        frame[col.name] = _typed(frame[col.name], col.name, ctype, site, first_data_line)
    return frame


def _typed(values: pd.Series, name: str, ctype: str, site: SiteConfig, offset: int) -> pd.Series:
    stripped = values.str.strip()
    missing = stripped.isin(site.missing)
    if ctype not in ("numeric", "categorical"):
        return stripped.where(~missing, None)
    numbers = pd.to_numeric(stripped.where(~missing, None), errors="coerce")
    bad = numbers.isna() & ~missing
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{site.data_path}: line {row + offset}, column {name!r}: {values.iloc[row]!r} is not "
            f"a number (schema type {ctype}); fix the value, or mark it missing with one of "
            f"{list(site.missing)}"
        )
    return numbers


def _binary_label(frame: pd.DataFrame, site: SiteConfig) -> NDArray[np.float32]:
    raw = frame[site.label]
    if site.positive_above is not None:
        y = raw.astype(float) > float(site.positive_above)
    elif site.positive:
        y = raw.isin(site.positive)
    else:
        y = raw.astype(float) > 0
    classes = set(np.unique(y.to_numpy()))
    if len(classes) < 2:
        raise SchemaError(
            f"{site.data_path}: label {site.label!r} has one class only ({classes}) after "
            f"cleaning {len(frame)} rows; a classifier needs both classes. Check [schema] "
            "positive/positive_above and the data"
        )
    out: NDArray[np.float32] = y.to_numpy().astype(np.float32)
    return out


def feature_names(site: SiteConfig) -> tuple[str, ...]:
    """Model input names: numeric columns as is, categoricals one-hot minus their first level."""
    out: list[str] = []
    for c in site.feature_columns:
        out += [f"{c.name}={lv}" for lv in c.levels[1:]] if c.type == "categorical" else [c.name]
    return tuple(out)


def _encode(frame: pd.DataFrame, site: SiteConfig) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """The model inputs, and which of them are numeric columns without declared constants."""
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
    return np.hstack(parts), np.asarray(fitted, dtype=bool)


def _split(
    frame: pd.DataFrame, y: NDArray[np.float32], site: SiteConfig
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    idx = np.arange(len(frame))
    if site.split_column is not None:
        test = frame[site.split_column].to_numpy(np.float64) >= float(site.split_at or 0)
        return idx[~test], idx[test]
    stratify = y if site.stratify and np.bincount(y.astype(int)).min() >= 3 else None
    train, test = train_test_split(
        idx, test_size=site.test_fraction, random_state=site.split_seed, stratify=stratify
    )
    return np.asarray(train), np.asarray(test)


def prepare_site(site: SiteConfig) -> SiteData:
    """Load, clean (drop rows missing a used value), split, encode and standardise one site.

    A numeric feature with declared ``center``/``scale`` (public constants) is standardised with
    them; one without is standardised with this site's training rows' mean and std (refused under
    DP: those are statistics of private rows). One-hot columns stay 0/1, except at a site that
    declares no constants at all, where every input is standardised by its rows (as the published
    per-site protocols do).
    """
    frame = load_table(site)
    used = [c.name for c in site.feature_columns] + [site.label]
    frame = frame.dropna(subset=used).reset_index(drop=True)
    if len(frame) < 4:
        raise SchemaError(
            f"{site.data_path}: only {len(frame)} complete rows after dropping rows with missing "
            f"values in {used}; a site needs at least 4"
        )
    y = _binary_label(frame, site)
    x, fitted = _encode(frame, site)
    train, test = _split(frame, y, site)
    if fitted.any():
        mean = x[train][:, fitted].mean(axis=0)
        std = x[train][:, fitted].std(axis=0)
        std[std == 0] = 1.0
        x[:, fitted] = (x[:, fitted] - mean) / std
    return SiteData(
        site=site.name,
        x_train=x[train].astype(np.float32),
        y_train=y[train],
        x_test=x[test].astype(np.float32),
        y_test=y[test],
        features=feature_names(site),
        test_frame=frame.iloc[test].reset_index(drop=True),
    )
