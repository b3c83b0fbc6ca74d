"""What a consortium-sized histogram costs through Flower: time, memory, statistics.json size.

Run from the repository root::

    .venv/bin/python benchmarks/consortium_release.py                  # 280,000 cells
    .venv/bin/python benchmarks/consortium_release.py --cells 4200 280000

The consortium job's statistic (``examples/finance/queries/consortium.toml``) is a histogram of
``terminals x 14 weeks`` cells released under HE by five banks. What grows with the cell count is
the release (OpenDP per cell), the ciphertexts, the coordinator's sum, the decryption, the
combined intervals and ``statistics.json``; the number of rows does not matter for those. So this
runs the real batch through Flower's simulation (``run_statistics_app``, five banks, HE, split
noise) on a small population (300 customers) whose terminal count gives the grid, with the
statistic's epsilon raised to 20 so that the group's noisy total is not suppressed by the noise of
hundreds of thousands of empty cells (the cost does not depend on epsilon; the copied banks get a
budget for it). Peak memory is the resident set of this process and its children (Ray workers),
sampled every 0.5 s. Writes ``benchmarks/results/consortium_release.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _machine import machine

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "finance"
RESULTS = ROOT / "benchmarks" / "results" / "consortium_release.json"
WEEKS, CUSTOMERS = 14, 300


def _tree_rss() -> int:
    """Resident bytes of this process and all its descendants (from /proc)."""
    parent, rss = {}, {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(d)], rss[int(d)] = int(fields[1]), int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    tree, grew = {os.getpid()}, True
    while grew:
        new = {p for p, pp in parent.items() if pp in tree} - tree
        tree |= new
        grew = bool(new)
    return sum(rss.get(p, 0) for p in tree)


def _app(tmp: Path, cells: int) -> Path:
    app = tmp / "finance"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("data", "german", "__pycache__", ".fedcore"))
    with (app / "prepare.py").open("a") as f:
        f.write(f"\nCONSORTIUM = consortium_data({CUSTOMERS}, {cells // WEEKS})\n")
    query = app / "queries" / "consortium.toml"
    text = query.read_text().replace("stop = 280000", f"stop = {cells}")
    query.write_text(text.replace("epsilon = 1.0", "epsilon = 20.0"))
    for site in (app / "sites-consortium-dp").glob("*.toml"):
        site.write_text(site.read_text().replace("budget_epsilon = 4.0", "budget_epsilon = 40.0"))
    return app


def measure(cells: int) -> dict[str, Any]:
    from fedcore.analytics.released import released_histogram
    from fedcore.harness.app import load_app, run_prepare
    from fedcore.harness.statistics import run_statistics_app

    with tempfile.TemporaryDirectory(prefix="consortium-release-") as tmp:
        app = _app(Path(tmp), cells)
        run_prepare(load_app(app), 42, data="consortium_dp")
        peak, done = [0], threading.Event()

        def watch() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss())
                time.sleep(0.5)

        before = _tree_rss()
        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        files = sorted((app / "sites-consortium-dp").glob("*.toml"))
        t0 = time.perf_counter()
        run_statistics_app(
            app, app / "queries" / "consortium.toml", out_dir=Path(tmp) / "out", curves=False,
            site_files=files, prepared=True,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        done.set()
        thread.join()
        out = Path(tmp) / "out" / "statistics.json"
        t1 = time.perf_counter()
        vector = released_histogram(out, "consortium frauds")
        read = time.perf_counter() - t1
        return {
            "cells": cells,
            "released_cells": int(vector.size),
            "wall_s": round(wall, 1),
            "peak_rss_gib": round(peak[0] / 2**30, 2),
            "rss_before_gib": round(before / 2**30, 2),
            "statistics_json_mib": round(out.stat().st_size / 2**20, 2),
            "read_back_s": round(read, 2),
            "report_lines": len((Path(tmp) / "out" / "report.md").read_text().splitlines()),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[280_000])
    args = parser.parse_args()
    os.environ.setdefault("FLWR_HOME", tempfile.mkdtemp(prefix="flwr-home-"))
    runs = [measure(c) for c in args.cells]
    body = {"machine": machine(), "customers": CUSTOMERS, "sites": 5, "he": True, "runs": runs}
    RESULTS.write_text(json.dumps(body, indent=1) + "\n")
    print("| cells | wall s | peak RSS GiB (process tree) | statistics.json MiB |")
    print("|---:|---:|---:|---:|")
    for r in runs:
        print(f"| {r['cells']:,} | {r['wall_s']} | {r['peak_rss_gib']} | {r['statistics_json_mib']} |")


if __name__ == "__main__":
    main()
