"""Prepare hook of the German credit sub-app: split ``german.data`` over three lenders.

``fedcore run examples/finance/german`` calls :func:`prepare` (``[tool.fedcore] prepare``) before
it loads the sites. It reads the Statlog German credit file (1,000 applicants, space-separated,
20 attributes and the class: 1 = good, 2 = bad), gives every applicant to one of three lenders by
a seeded shuffle (shares :data:`SHARES`), and writes ``data/lender_<i>.csv`` with a header and an
``applicant_id`` (the 1-based line in ``german.data``). Categorical codes (``A11`` ...) are kept as
they are; the site files list them as string levels.

The files are rewritten only when ``data/config.json`` differs from the current settings.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["COLUMNS", "SEED", "SHARES", "prepare", "split_rows", "write_lenders"]

COLUMNS = (
    "checking_status",
    "duration_months",
    "credit_history",
    "purpose",
    "credit_amount",
    "savings",
    "employment_since",
    "installment_rate",
    "personal_status_sex",
    "other_debtors",
    "residence_since",
    "property",
    "age",
    "other_installment_plans",
    "housing",
    "existing_credits",
    "job",
    "num_dependents",
    "telephone",
    "foreign_worker",
    "credit_risk",
)
"""The 21 columns of ``german.data`` in file order (``german.doc`` section 7); 1 = good, 2 = bad."""

SHARES = (0.5, 0.3, 0.2)
SEED = 2024
_SHARED = Path(os.environ.get("FEDCORE_SHARED_DATA", Path(__file__).resolve().parents[4] / "shared" / "data"))
SOURCE = _SHARED / "german_credit" / "german.data"
"""Where ``german.data`` is read from (``$FEDCORE_SHARED_DATA`` or ``../shared/data``)."""


def read_german(path: Path) -> list[list[str]]:
    """The rows of ``german.data`` as lists of 21 strings."""
    rows = [line.split() for line in path.read_text(encoding="ascii").splitlines() if line.strip()]
    bad = [i + 1 for i, r in enumerate(rows) if len(r) != len(COLUMNS)]
    if bad:
        raise ValueError(f"{path}: lines {bad[:5]} do not have {len(COLUMNS)} fields; is it german.data?")
    return rows


def split_rows(n_rows: int, *, shares: tuple[float, ...] = SHARES, seed: int = SEED) -> list[list[int]]:
    """Row indices of each lender: a seeded permutation cut by ``shares`` (sorted within a lender)."""
    order = np.random.default_rng(seed).permutation(n_rows)
    cuts = np.round(np.cumsum(shares)[:-1] * n_rows).astype(int)
    return [sorted(int(i) for i in part) for part in np.split(order, cuts)]


def write_lenders(source: Path, out_dir: Path) -> list[Path]:
    """Write ``lender_<i>.csv`` (``applicant_id`` first, then :data:`COLUMNS`) for every lender."""
    rows = read_german(source)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for lender, idx in enumerate(split_rows(len(rows))):
        path = out_dir / f"lender_{lender}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(("applicant_id", *COLUMNS))
            writer.writerows([i + 1, *rows[i]] for i in idx)
        paths.append(path)
    return paths


def _stamp(source: Path) -> dict[str, Any]:
    digest = hashlib.md5(source.read_bytes()).hexdigest()
    return {"format": 1, "source_md5": digest, "shares": list(SHARES), "seed": SEED}


def prepare(app_dir: Path, source: Path = SOURCE) -> None:
    """The app's prepare hook: make ``app_dir/data/lender_*.csv`` unless they are current."""
    if not source.is_file():
        raise FileNotFoundError(
            f"German credit data not found at {source}; put the UCI german.data there "
            "(see shared/data/README.md)"
        )
    out_dir = Path(app_dir) / "data"
    stamp_file = out_dir / "config.json"
    stamp = _stamp(source)
    current = stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp
    if current and all((out_dir / f"lender_{i}.csv").is_file() for i in range(len(SHARES))):
        return
    stamp_file.unlink(missing_ok=True)
    write_lenders(source, out_dir)
    stamp_file.write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    prepare(Path(__file__).resolve().parent)
