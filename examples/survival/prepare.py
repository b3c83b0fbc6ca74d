"""Prepare hook of the survival example: one CSV per region of Fed-TCGA-BRCA, FLamby's split.

``fedcore run examples/survival`` calls :func:`prepare` (``[tool.fedcore] prepare``) before it loads
the sites. The shared data (``../shared/data/tcga_brca/``: ``brca.csv``, one row per patient, and
``train_test_split.csv``, FLamby's static split ``pid, fold, fold2 = train_K / test_K``) holds every
region's patients in one file; a region's site reads only its own. The hook writes
``data/<region>.csv``: the region's patients (FLamby keeps the 1,088 named in the split file), every
column of ``brca.csv`` and ``test`` (1 = FLamby's test fold), which the site files' ``[split]
column`` selects. A real hospital points ``[data] path`` at its own CSV with the same columns.
"""

from __future__ import annotations

import csv
from pathlib import Path

REGIONS = ("northeast", "south", "west", "midwest", "europe", "canada")  # FLamby's regions 0-5
DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tcga_brca"


def prepare(app_dir: Path, data_dir: Path | None = None) -> None:
    """Write ``app_dir/data/<region>.csv`` (skipped when they are newer than the shared files)."""
    source = Path(data_dir) if data_dir is not None else DATA.resolve()
    out = Path(app_dir) / "data"
    inputs = [source / "brca.csv", source / "train_test_split.csv"]
    written = [out / f"{r}.csv" for r in REGIONS]
    if all(p.is_file() for p in written) and min(p.stat().st_mtime for p in written) >= max(
        p.stat().st_mtime for p in inputs
    ):
        return
    with inputs[1].open(newline="") as f:
        split = {row["pid"]: row["fold2"].split("_") for row in csv.DictReader(f)}
    with inputs[0].open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [row for row in reader if row and row[0] in split]
    out.mkdir(exist_ok=True)
    for k, region in enumerate(REGIONS):
        mine = [(row, split[row[0]][0]) for row in rows if split[row[0]][1] == str(k)]
        tmp = out / f".{region}.csv.tmp"
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([*header, "test"])
            writer.writerows([*row, "1" if fold == "test" else "0"] for row, fold in mine)
        tmp.replace(out / f"{region}.csv")
