"""Reading a newcomer's CSV for ``fedcore init``: the table, each column's type, the label rule, the sites."""

from __future__ import annotations

import csv
import io
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fedcore.data import SEPARATORS, detect_separator
from fedcore.errors import ConfigError, DataError

MISSING = ("", "NA", "?")  # the site loader's default missing markers
MAX_LEVELS = 20
MIN_SITE_ROWS = 4  # prepare_site refuses a site with fewer complete rows


@dataclass(frozen=True)
class Table:
    """A CSV read as stripped strings: its header and rows."""

    path: Path
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def values(self, column: str) -> list[str]:
        i = self.header.index(column)
        return [r[i] for r in self.rows]


@dataclass(frozen=True)
class Column:
    """One inferred column as a site file declares it; ``note`` goes on its ``# review:`` line."""

    name: str
    type: Literal["numeric", "categorical", "text"]
    levels: tuple[Any, ...] = ()
    tag: Literal["identifier", "sensitive"] = "sensitive"
    center: float | None = None
    scale: float | None = None
    note: str = ""
    bounds: tuple[float, float] | None = None
    missing: float = 0.0  # the share of the file's rows where it is empty
    zeros: str = ""  # advice: its zeros look like a "not measured" code (``zero_coded``)

    @property
    def indicated(self) -> bool:
        """A feature with empty values: kept, with a ``NAME=missing`` input (``indicate_missing``)."""
        return self.missing > 0 and self.type != "text" and self.tag != "identifier"

    def spec(self) -> Any:
        """Its value in ``[schema.columns]``: the type alone, or an inline table."""
        out: dict[str, Any] = {"type": self.type}
        out |= {"levels": self.levels} if self.levels else {}
        out |= {"tag": self.tag} if self.tag == "identifier" else {}
        out |= {"center": self.center, "scale": self.scale} if self.center is not None else {}
        out |= {"bounds": [int(b) if b.is_integer() else b for b in self.bounds]} if self.bounds else {}
        out |= {"indicate_missing": True} if self.indicated else {}
        return self.type if len(out) == 1 else out


@dataclass(frozen=True)
class LabelRule:
    """The positive class: ``positive`` values, or values ``> positive_above``."""

    positive: tuple[Any, ...] = ()
    positive_above: float | None = None
    note: str = ""

    def flags(self, values: Iterable[str]) -> list[bool]:
        """Positive or not, for each present (non-missing) value."""
        present = [v for v in values if v not in MISSING]
        if self.positive_above is not None:
            return [float(v) > self.positive_above for v in present]
        return [v in self.positive or _as_level(v) in self.positive for v in present]


@dataclass(frozen=True)
class InitResult:
    """What ``init_app`` wrote: the app, each site's rows, every file, warnings, next commands."""

    app_dir: Path
    sites: Mapping[str, int]
    files: tuple[Path, ...]
    warnings: tuple[str, ...]
    next_commands: tuple[str, ...]
    rows: Mapping[str, str] = field(default_factory=dict)  # per site: rows kept, left out and why
    indicated_columns: tuple[str, ...] = ()  # features with empty values: kept, with NAME=missing inputs


def _number(value: str) -> float | None:
    """``value`` as a float, else ``None``: infinite, NaN, above 2**53 (not exact: a code, kept as
    text) and underscores (pandas refuses them) are not numbers."""
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) and abs(x) < 2**53 and "_" not in value else None


def _as_level(value: str) -> Any:
    """A number when ``value`` is one (an int when integral), else the string itself."""
    x = _number(value)
    return value if x is None else int(x) if x.is_integer() else x


def _distinct(values: Iterable[str]) -> tuple[list[Any], bool]:
    """The sorted distinct present values (numbers if all are numbers), and whether they are."""
    present = {v for v in values if v not in MISSING}
    numeric = bool(present) and all(_number(v) is not None for v in present)
    return sorted({_as_level(v) for v in present} if numeric else present), numeric


def read_table(path: Path) -> Table:
    """Read a CSV with a header (UTF-8, BOM stripped, separator among ``, ; tab |``)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err}); check the path") from err
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason}); save it as a UTF-8 CSV") from err
    reader = csv.reader(io.StringIO(text), delimiter=_separator(path, text))
    header = tuple(h.strip() for h in next(reader, []))
    rows = []
    for row in (r for r in reader if any(c.strip() for c in r)):
        if len(row) != len(header):
            raise DataError(
                f"{path}: line {reader.line_num} has {len(row)} fields, the header {len(header)}; "
                "fix or remove that line"
            )
        rows.append(tuple(c.strip() for c in row))
    bad = sorted({h for h in header if not h or header.count(h) > 1})
    if bad or not rows:
        raise DataError(f"{path}: no data rows, or header names {bad} empty or repeated; fix the file")
    return Table(path, header, tuple(rows))


def _separator(path: Path, text: str) -> str:
    """The separator that splits the header into the most columns (the rows are checked after)."""
    header = next((line for line in text.splitlines() if line.strip()), "")
    width = max(len(next(csv.reader([header], delimiter=s))) for s in SEPARATORS)
    fix = "fedcore init needs a CSV whose header row names the label and the features"
    return detect_separator(text, width=width if width > 1 else None, source=path, fix=fix)


def infer_column(name: str, values: Sequence[str], *, identifier: bool = False) -> Column:
    """``categorical`` (2 to 20 distinct values, some repeated; numbers only if integral), else
    ``numeric`` (every present value a finite number), else ``text``; identifiers never categorical."""
    distinct, numeric = _distinct(values)
    present = [v for v in values if v not in MISSING]
    gaps = len(values) - len(present)
    missing = f", {gaps} missing" if gaps else ""
    kept = f", {gaps} empty: kept, with input {name}=missing" if gaps else ""
    if identifier:
        return Column(name, "numeric" if numeric else "text", tag="identifier", note="identifier")
    coded = not numeric or all(isinstance(v, int) for v in distinct)
    share = 1 - len(present) / max(1, len(values))
    if 2 <= len(distinct) <= MAX_LEVELS and len(distinct) < len(present) and coded:
        note = f"categorical, {len(distinct)} levels (all of this file's){kept}"
        return Column(name, "categorical", tuple(distinct), note=note, missing=share)
    if not numeric:
        return Column(name, "text", note=f"text, {len(distinct)} distinct values{missing}: not a feature")
    x = np.asarray([float(v) for v in present])
    center, std = float(f"{x.mean():.3g}") + 0.0, float(f"{x.std():.3g}")
    bounds = coarse_bounds(float(x.min()), float(x.max()))
    zeros = zero_coded(name, x)
    note = (
        f"numeric, {len(distinct)} distinct values{kept}; center/scale from this file; bounds: its range "
        f"rounded outward, the site's decision{'; ' + zeros if zeros else ''}"
    )
    return Column(name, "numeric", center=center, scale=std if std > 0 else 1.0, note=note, bounds=bounds,
                  missing=share, zeros=zeros)  # fmt: skip


def zero_coded(name: str, x: np.ndarray) -> str:
    """Advice when ``x`` (a numeric column's present values) looks like it marks "not measured" with 0:
    at least 5 zeros (and 1% of the values) but fewer than half, every other value positive, above 1
    somewhere (not a share), and further from 0 than the spread of its middle half (cholesterol 0
    beside 85-603; not a count such as 0 pregnancies beside 1-17, nor a fraud rate mostly 0). Empty
    otherwise."""
    nonzero = x[x != 0]
    n_zero = len(x) - len(nonzero)
    if not max(5, 0.01 * len(x)) <= n_zero < len(x) / 2 or nonzero.min() <= 0 or nonzero.max() <= 1:
        return ""
    low = float(nonzero.min())
    q1, q3 = (float(v) for v in np.percentile(nonzero, [25, 75]))
    if low <= q3 - q1:
        return ""
    return (
        f"{n_zero} values are 0 while the others lie in {low:g}-{float(nonzero.max()):g}: if 0 means not "
        f"measured, empty those cells (then they are kept as {name}=missing)"
    )


def coarse_bounds(low: float, high: float) -> tuple[float, float]:
    """``[low, high]`` rounded outward to multiples of a coarse step (a power of ten, or half of one
    when the range spans less than two), e.g. 28..77 -> 20..80, 71..202 -> 50..250, 250..18424 ->
    0..20000: a clamp of public round numbers, not the file's exact extremes (which every statistic
    clamped to them would help reveal)."""
    span = (high - low) or abs(low) or 1.0
    step = 10.0 ** math.floor(math.log10(span))
    step = step / 2 if span / step < 2 else step
    lo, hi = math.floor(low / step) * step, math.ceil(high / step) * step
    return _tidy(lo), _tidy(hi if hi > lo else lo + step)


def _tidy(x: float) -> float:
    """``x`` without float noise (0.30000000000000004 -> 0.3) and without a negative zero."""
    return float(f"{x:.12g}") + 0.0


def infer_schema(table: Table, *, label: str, identifiers: Sequence[str]) -> tuple[Column, ...]:
    """Every column in file order; the label is ``numeric``, or ``text`` (compared as strings)."""
    cols = [infer_column(n, table.values(n), identifier=n in identifiers) for n in table.header]
    kind: Literal["numeric", "text"] = "numeric" if _distinct(table.values(label))[1] else "text"
    return tuple(Column(label, kind, note="the label") if c.name == label else c for c in cols)


def _check_label(
    label: str, seen: Sequence[Any], numeric: bool, wanted: Sequence[Any], above: float | None
) -> None:
    """Refuse a threshold on a text label, unknown positive values, or no rule where one is needed."""
    if above is not None and not numeric:
        raise ConfigError(
            f"--positive-above {above:g}: label {label!r} is not numeric (values {seen[:10]}); "
            "name the positive values with --positive"
        )
    if unknown := [v for v in wanted if v not in seen]:
        raise ConfigError(
            f"--positive {unknown}: not values of label {label!r}, whose values are {seen[:20]}"
        )
    if not wanted and above is None and len(seen) != 2:
        raise ConfigError(
            f"label {label!r} has {len(seen)} values {seen[:20]}; say which are positive with "
            "--positive VALUE ... or --positive-above X"
        )


def label_rule(
    table: Table, label: str, *, positive: Sequence[str], positive_above: float | None
) -> tuple[LabelRule, list[str]]:
    """The positive class from the options (else the larger of exactly two values), and warnings."""
    seen, numeric = _distinct(table.values(label))
    wanted = tuple(dict.fromkeys(_as_level(v.strip()) if numeric else v.strip() for v in positive))
    _check_label(label, seen, numeric, wanted, positive_above)
    warnings = []
    if positive_above is not None:
        rule = LabelRule(positive_above=positive_above, note=f"{label} > {positive_above:g} is positive")
    elif wanted:
        rule = LabelRule(positive=wanted, note="the positive class, from --positive")
    else:
        rule = LabelRule(positive=(seen[1],), note="the positive class, chosen by fedcore init: check it")
        warnings.append(
            f"label {label!r}: {seen[1]!r} taken as the positive class (else --positive {seen[0]})"
        )
    flags = rule.flags(table.values(label))
    if all(flags) or not any(flags):
        raise ConfigError(
            f"label {label!r} has one class only: all {len(flags)} labelled rows are "
            f"{'positive' if flags[0] else 'negative'} ({rule.note}); fix --positive or --positive-above"
        )
    return rule, warnings


def assign_sites(table: Table, *, sites: int, site_column: str | None, seed: int) -> dict[str, list[int]]:
    """Row indices per site, in file order: one site per value of ``site_column`` (named after it,
    sanitised), else a seeded shuffle cut into ``sites`` near-equal parts."""
    if site_column is None:
        order = np.random.default_rng(seed).permutation(len(table.rows))
        return {f"site_{i}": sorted(map(int, part)) for i, part in enumerate(np.array_split(order, sites))}
    values = table.values(site_column)
    if missing := [i + 2 for i, v in enumerate(values) if v in MISSING]:
        raise DataError(
            f"{table.path}: --site-column {site_column!r} is empty on lines {missing[:5]}; fill it"
        )
    names: dict[str, str] = {}
    for v in sorted(set(values)):
        ascii_ = unicodedata.normalize("NFKD", v).encode("ascii", "ignore").decode()
        base = re.sub(r"[^a-z0-9_-]+", "_", ascii_.lower()).strip("_-") or "site"
        name, i = base, 2
        while name in names.values():
            name, i = f"{base}_{i}", i + 1
        names[v] = name
    return {names[v]: [i for i, x in enumerate(values) if x == v] for v in names}


def check_sites(
    table: Table,
    parts: Mapping[str, Sequence[int]],
    columns: Sequence[Column],
    rule: LabelRule,
    label: str,
    test_fraction: float,
    indicated: Sequence[str] = (),
) -> tuple[int, dict[str, str]]:
    """The smallest site's training rows (complete rows, those the loader keeps, less the test share),
    and per site a line saying how many rows the loader will leave out and why; ``DataError`` naming
    every site with fewer than 4 complete rows, 2 training rows or one class."""
    used = [i for i, c in enumerate(columns) if c.type != "text" and c.tag != "identifier"]
    used = [i for i in used if columns[i].name not in indicated and columns[i].name != label]
    used.append(table.header.index(label))
    train, problems, rows = [], [], {}
    for name, idx in parts.items():
        kept = [table.rows[i] for i in idx if all(table.rows[i][j] not in MISSING for j in used)]
        flags = rule.flags(r[used[-1]] for r in kept)
        train.append(len(kept) - math.ceil(len(kept) * test_fraction))  # as train_test_split
        rows[name] = _dropped_line(table, idx, used, len(kept), indicated)
        if len(kept) < MIN_SITE_ROWS or train[-1] < 2 or all(flags) or not any(flags):
            problems.append(f"{name} ({len(idx)} rows, {len(kept)} complete, {sum(flags)} positive)")
    if problems:
        raise DataError(
            f"{table.path}: every site needs >= {MIN_SITE_ROWS} complete rows (no missing feature or "
            f"label), 2 of them for training, and both classes; not {', '.join(problems)}. Use fewer "
            "--sites, another --seed or a smaller --test-fraction"
        )
    return min(train), rows


def _dropped_line(
    table: Table, idx: Sequence[int], used: Sequence[int], kept: int, indicated: Sequence[str] = ()
) -> str:
    """``"294 rows, 261 kept; 33 left out: ..."`` (a row counts once), or ``"294 rows, all kept (212 with
    an empty value, indicated)"``."""
    if kept == len(idx):
        cols = [table.header.index(c) for c in indicated]
        gaps = sum(any(table.rows[i][j] in MISSING for j in cols) for i in idx)
        return f"{len(idx)} rows, all kept" + (f" ({gaps} with an empty value, indicated)" if gaps else "")
    empty = {table.header[j]: sum(table.rows[i][j] in MISSING for i in idx) for j in used}
    worst = sorted(((n, c) for c, n in empty.items() if n), reverse=True)[:4]
    why = ", ".join(f"{c} empty in {n}" for n, c in worst)
    return f"{len(idx)} rows, {kept} kept; {len(idx) - kept} left out (an empty value: {why})"
