"""``fedcore init``: one CSV becomes a ready simulation app (site files, jobs, Flower components).

Pure logic, no argparse and no printing: :func:`init_app` reads the CSV, infers a schema, splits the
rows into simulated sites, and writes the app in one step (built in a hidden folder beside it, then
renamed), so a refusal or a failure leaves nothing behind. It returns what it wrote and the warnings
the caller must show. Numeric features get ``center``/``scale`` computed from the file itself: fine
for a simulation, never for a real federation under DP (:data:`SCALING_WARNING`).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path

from fedcore.appinit.infer import (
    MIN_SITE_ROWS,
    InitResult,
    Table,
    assign_sites,
    check_sites,
    infer_schema,
    label_rule,
    read_table,
)
from fedcore.appinit.render import DP_MAX_BATCH, SCALING_WARNING, AppPlan, render_app, write_app
from fedcore.config.reader import suggest
from fedcore.errors import ConfigError, DataError

__all__ = ["SCALING_WARNING", "InitResult", "init_app"]

SIZE_NOISE_MARGIN = 40  # 4 std of the training-set size a site releases under DP (dataset_size_noise 10)


def _check_request(
    out: Path,
    positive: Sequence[str],
    above: float | None,
    sites: int | None,
    site_column: str | None,
    test_fraction: float,
) -> None:
    """Every problem with the options and with ``out``, at once, before the CSV is read."""
    checks = {
        "give --positive or --positive-above, not both": bool(positive) and above is not None,
        "give --sites or --site-column, not both": sites is not None and site_column is not None,
        f"--sites must be >= 2 (a site's policy refuses jobs for fewer), got {sites}": (
            sites is not None and sites < 2
        ),
        f"--test-fraction must be in (0, 1), got {test_fraction}": not 0 < test_fraction < 1,
        f"{out} exists and is not empty; fedcore init never overwrites: choose a new --out": (
            out.exists() and (not out.is_dir() or any(out.iterdir()))
        ),
    }
    problems = [text for text, failed in checks.items() if failed]
    if problems:
        raise ConfigError("fedcore init: " + "; ".join(problems))


def _check_columns(table: Table, label: str, ids: Sequence[str], site_column: str | None) -> None:
    """Every column named exists; the label is neither an identifier nor the site column."""
    named = [("--label", label), *(("--id", i) for i in ids)]
    named += [("--site-column", site_column)] if site_column else []
    problems = [f"{flag} {n!r} is not a column{suggest(n, table.header)}" for flag, n in named]
    problems = [p for p, (_, n) in zip(problems, named, strict=True) if n not in table.header]
    if label in (*ids, site_column):
        problems.append(f"the label {label!r} cannot also be an --id or the --site-column")
    if problems:
        raise ConfigError(f"{table.path}: " + "; ".join(problems) + f"; its columns: {list(table.header)}")


def _split(table: Table, sites: int | None, site_column: str | None, seed: int) -> dict[str, list[int]]:
    """The sites' rows, refusing fewer than 4 rows per site or a site column with one value."""
    n, k = len(table.rows), sites or 3
    if site_column is None and n < MIN_SITE_ROWS * k:
        raise DataError(
            f"{table.path}: {n} rows cannot make {k} sites of {MIN_SITE_ROWS} rows or more; "
            f"use --sites {max(2, n // MIN_SITE_ROWS)} or fewer, or more rows"
        )
    parts = assign_sites(table, sites=k, site_column=site_column, seed=seed)
    if len(parts) < 2:
        raise DataError(f"{table.path}: --site-column {site_column!r} has one value; a federation needs 2")
    return parts


def _slug(text: str, default: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or default


def init_app(
    data: Path | str,
    out: Path | str,
    *,
    label: str,
    positive: Sequence[str] = (),
    positive_above: float | None = None,
    sites: int | None = None,
    site_column: str | None = None,
    ids: Sequence[str] = (),
    test_fraction: float = 0.3,
    seed: int = 0,
) -> InitResult:
    """Write a simulation app for the CSV ``data`` into ``out`` (new, or an empty folder).

    Parameters
    ----------
    data, out
        The CSV (with a header row) and the app directory to create.
    label, positive, positive_above
        The label column and its positive class: values, or values above a threshold (default: the
        larger of exactly two values, with a warning).
    sites, site_column
        ``sites`` near-equal parts by a seeded shuffle (default 3), or one site per value of
        ``site_column`` (tagged an identifier).
    ids
        Identifier columns: never features.
    test_fraction, seed
        Each site's test share; the seed of the shuffle, of the sites' splits and of the jobs.

    Raises
    ------
    ConfigError
        A bad option, an unknown column, a label with one class, an ``out`` that is not empty.
    DataError
        An unreadable CSV, or a site with too few complete rows or one class.
    """
    out = Path(out)
    _check_request(out, positive, positive_above, sites, site_column, test_fraction)
    table = read_table(Path(data))
    _check_columns(table, label, ids, site_column)
    columns = infer_schema(table, label=label, identifiers=(*ids, *([site_column] if site_column else [])))
    rule, warnings = label_rule(table, label, positive=positive, positive_above=positive_above)
    parts = _split(table, sites, site_column, seed)
    indicated = tuple(c.name for c in columns if c.indicated)
    train, rows = check_sites(table, parts, columns, rule, label, test_fraction, indicated)
    batch = max(1, min(DP_MAX_BATCH, train - SIZE_NOISE_MARGIN, train // 4))
    name = re.sub(r"[\x00-\x1f\x7f]", "?", table.path.name)
    project = "fedcore-" + _slug(out.resolve().name, "app")
    dataset = _slug(table.path.stem, "data")
    app = AppPlan(name, dataset, project, columns, label, rule, parts, test_fraction, seed, batch)
    files = write_app(out, render_app(app, table))
    if any(c.center is not None for c in columns):
        warnings.insert(0, SCALING_WARNING.format(data=table.path))
    warnings += [f"column {c.name!r}: {c.zeros}" for c in columns if c.zeros]
    if unused := [c.name for c in columns if c.type == "text" and c.tag != "identifier" and c.name != label]:
        warnings.append(f"text columns {unused} are not features; to use one, declare it categorical")
    runs = (f"fedcore run {shlex.quote(str(out))}", f"fedcore run {shlex.quote(str(out))} --job dp")
    sizes = {s: len(ix) for s, ix in parts.items()}
    return InitResult(out, sizes, files, tuple(warnings), runs, rows, indicated)
