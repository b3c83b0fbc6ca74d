"""Benchmark seconds per round and peak memory against the number of sites, fedcore beside plain Flower.

For each site count N (default 10, 100, 1,000) both sides simulate N virtual sites in
``flwr.simulation.run_simulation`` (Ray backend, 1 CPU per virtual node) with the same model (torch
logistic regression), data, local steps, batch size and SGD learning rate, and the same sampling:
``--per-round`` sites (default 10) drawn uniformly for each round's training and, separately, for its
evaluation.

* Sites: N site files generated in a temporary folder, each the medical example's ``cleveland.toml``
  pointed at its own small CSV (``--rows`` rows drawn with replacement from the Cleveland file, a
  different draw per site). Nothing is written to the repository but the results.
Both sides call Flower's engine entry ``_run_simulation`` (what ``flwr-simulation`` calls).

* fedcore: ``fedcore.flower.simulation.simulate`` with the fedavg job and ``[job] sites_per_round``;
  before round 1 it describes and admits every site (one batch of N messages each).
* plain Flower: ``flwr.serverapp.strategy.FedAvg`` with ``fraction_train = fraction_evaluate = k/N``
  and the module-level ClientApp of ``_plain_flower_app.py``; before round 1 it queries every site
  once (loads its data), as fedcore's schema query does.

Seconds per round: from the strategy's ``configure_train`` to the end of its ``aggregate_evaluate``
(train + evaluate of the sampled sites, Flower's transport and polling included), the mean over
the timed rounds (round 1 is a warm-up and dropped): the whole timed span divided by its rounds,
what a user waits. Flower's simulation engine picks messages up and the ServerApp pulls replies
every 0.1 s, so single rounds are quantised (e.g. 0.42 / 0.52 / 0.62 s) and a median of a few
rounds jumps by a whole step between runs; the mean over many rounds does not. Each site count runs
``--pairs`` paired runs of both sides (order alternating A B, B A, ...; default 3 pairs of 30 timed
rounds); the ratio is the median of the pairs' ratios, with their min and max. Peak RSS: the
largest sum of resident set sizes over this process and all its descendants (Ray's GCS, raylet and
workers), sampled every 0.2 s from ``/proc`` while the side runs. Run ``python benchmarks/scale.py`` (writes
``benchmarks/results/scale.json`` and prints a table); ``--sites 10,100`` for a quicker look.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _plain_flower_app as plain_app
from _coordinator_profile import CoordinatorProfile, timed_sum
from _machine import machine
from _site_profile import site_breakdown

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = ROOT / "examples" / "medical"
TEMPLATE = APP_DIR / "sites" / "cleveland.toml"
JOB_TEMPLATE = APP_DIR / "jobs" / "fedavg.toml"
RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
TARGET = 1.1

DEFINITIONS = {
    "seconds_per_round": "per run: the mean over the timed rounds (2..rounds+1) of the wall seconds "
    "from the strategy's configure_train to the end of its aggregate_evaluate (train on the sampled "
    "sites + evaluate on another sample, Flower's transport and 0.1 s polling included); per point: "
    "the median over the pairs of the runs' means",
    "ratio": "median over the pairs of (fedcore mean s/round / plain mean s/round) of the same pair; "
    "ratio_min, ratio_max: over the pairs; ratio_of_medians: the same with each run's median round "
    "(quantised by Flower's 0.1 s polling, shown for comparison)",
    "pairs": "paired runs of both sides per site count, order alternating (fedcore, plain), "
    "(plain, fedcore), ...; each pair's own figures in points.<n>.pairs",
    "peak_rss_mb": "largest sum of VmRSS over this process and all its descendants (Ray GCS, raylet, "
    "workers), sampled every 0.2 s from /proc during the side's whole simulation; the driver's own "
    "memory (imports, earlier runs) is included on both sides",
    "sim_wall_s": "wall seconds of the whole simulation call: Ray start-up, every site's data "
    "loading, fedcore's describe + admission of all sites, all rounds, shutdown",
    "coordinator_s_per_round": "seconds per timed round spent inside the strategy's own methods "
    "(configure_train, aggregate_train, configure_evaluate, aggregate_evaluate) in the ServerApp; "
    "the rest of a round is Flower's transport and polling and the ClientApp handlers",
    "coordinator_ms_per_round": "fedcore only: ms per timed round inside each part of the "
    "coordinator's round (benchmarks/_coordinator_profile.py): the four strategy methods, and inside "
    "them the reply checks, the aggregator and the checkpoint written after every round",
    "site_profile": "fedcore only, in the driver process after the simulations, outside Ray "
    "(benchmarks/_site_profile.py): mean wall ms per train/evaluate message of 10 of the point's "
    "sites, cold (the process has not served the site yet, as a Ray worker the first time it gets a "
    "site) and warm, and the same under cProfile split into fedcore's parts (parts_ms)",
    "loadavg": "os.getloadavg() (1, 5, 15 min) when the point (or the benchmark) started and ended",
    "handler_ms": "per message type, mean wall ms inside the ClientApp (the cpu_probe mod of "
    "_plain_flower_app.py around both sides' handlers) over the timed rounds; handler_s_per_round: "
    "their sum per timed round (train + evaluate messages, spread over the Ray workers)",
}


# --------------------------------------------------------------------------- sites


def make_sites(n: int, rows: int, folder: Path) -> list[Path]:
    """``n`` site files (cleveland.toml's schema) each with its own CSV of ``rows`` Cleveland rows."""
    source = (APP_DIR / "sites" / "../../../../shared/data/heart_disease/processed.cleveland.data").resolve()
    pool = [r for r in csv.reader(source.read_text().splitlines()) if r]
    template = TEMPLATE.read_text()
    old_path = 'path = "../../../../shared/data/heart_disease/processed.cleveland.data"'
    if old_path not in template:
        raise RuntimeError(f"{TEMPLATE} no longer names its data as {old_path}")
    rng = random.Random(7)
    files = []
    for i in range(n):
        name = f"site{i:04d}"
        data = folder / f"{name}.csv"
        with data.open("w", newline="") as fh:
            csv.writer(fh).writerows(rng.choice(pool) for _ in range(rows))
        text = template.replace('name = "cleveland"', f'name = "{name}"').replace(
            old_path, f'path = "{data}"'
        )
        site = folder / f"{name}.toml"
        site.write_text(text)
        files.append(site)
    return files


def make_job(folder: Path, *, rounds: int, per_round: int, local_steps: int) -> Path:
    job = JOB_TEMPLATE.read_text()
    for key, value in (("rounds", rounds), ("min_sites", min(per_round, 2)), ("local_steps", local_steps)):
        lines = [ln for ln in job.splitlines() if ln.split("=")[0].strip() == key]
        if len(lines) != 1:
            raise RuntimeError(f"{JOB_TEMPLATE} has no single {key} line")
        job = job.replace(lines[0], f"{key} = {value}")
    job = job.replace("[model]", f"sites_per_round = {per_round}\n\n[model]", 1)
    path = folder / "scale.toml"
    path.write_text(job)
    return path


# --------------------------------------------------------------------------- memory


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            text = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(d))
    return tree


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(root: int) -> float:
    tree, todo, total = _children(), [root], 0
    while todo:
        pid = todo.pop()
        total += _rss_kb(pid)
        todo.extend(tree.get(pid, []))
    return total / 1024


class PeakRss:
    """Sample the process tree's RSS in a thread; ``peak_mb`` after the ``with`` block."""

    def __init__(self, every: float = 0.2) -> None:
        self.every, self.peak_mb = every, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, tree_rss_mb(os.getpid()))
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- the two sides

_STRATEGY_S: list[tuple[int, float]] = []  # (round, seconds) spent in a strategy method


def _coordinator_s(rounds: int) -> float:
    out = sum(s for r, s in _STRATEGY_S if r >= 2) / rounds
    _STRATEGY_S.clear()
    return round(out, 4)


def _probed_fedcore_app(*args: Any, **kwargs: Any) -> Any:
    from fedcore.flower.client_app import make_client_app

    return plain_app.with_cpu_probe(make_client_app(*args, **kwargs))


def _handler_ms(folder: Path, timed_from: int, rounds: int) -> dict[str, Any]:
    """Mean wall ms per message type in the timed rounds, from the cpu_probe files in ``folder``."""
    rows = []
    for f in folder.glob("*.tsv"):
        for line in f.read_text().splitlines():
            kind, rnd, _, _, wall = line.split("\t")
            if int(rnd) >= timed_from:
                rows.append((kind, float(wall)))
    out: dict[str, Any] = {
        kind: round(statistics.mean(w for k, w in rows if k == kind) * 1e3, 2)
        for kind in sorted({k for k, _ in rows})
    }
    out["handler_s_per_round"] = round(sum(w for _, w in rows) / rounds, 4)
    return out


def run_fedcore(sites: list[Path], job: Path, folder: Path) -> tuple[list[float], dict[str, Any]]:
    from fedcore.config import load_site
    from fedcore.flower import simulation
    from fedcore.flower.simulation import simulate
    from fedcore.site.guard import init_site_state

    simulation.make_client_app = _probed_fedcore_app  # type: ignore[assignment]  # same probe as plain
    out = Path(tempfile.mkdtemp(prefix="fedcore-out-", dir=folder))  # fresh ledgers for every run
    t0 = time.perf_counter()
    for site in sites:  # each site's ledger and audit log, as `fedcore run` creates them (not timed)
        init_site_state(load_site(site), out / "sites")
    state_s = time.perf_counter() - t0
    logs: list[Any] = []
    with CoordinatorProfile() as prof:
        simulate(APP_DIR, job, sites, out_dir=out, on_round=logs.append)
    metrics = json.loads((out / "metrics.json").read_text())
    sampled = [len(r["sampled_train"]) for r in metrics["rounds"]]
    parts = prof.per_round(2, len(logs) - 1)
    extra = {"sampled_train_per_round": sampled, "site_state_creation_s": round(state_s, 1)}
    extra["coordinator_ms_per_round"] = parts
    extra["coordinator_round_methods_s"] = round(timed_sum(parts) / 1e3, 4)
    return [float(r.seconds) for r in logs], extra


def run_plain(sites: list[Path], job: Path, folder: Path) -> tuple[list[float], dict[str, Any]]:
    from fedcore.config import load_job, load_site
    from fedcore.data import prepare_site

    spec = load_job(job)
    train = dict(spec.table["train"])
    listing = folder / "plain-sites.txt"
    listing.write_text("\n".join(map(str, sites)) + "\n")
    os.environ[plain_app.SITES_ENV] = str(listing)  # Ray's workers inherit it at ray.init
    num_features = len(prepare_site(load_site(sites[0])).features)
    times: list[float] = []
    assert spec.sites_per_round is not None
    server = plain_app.make_server_app(
        num_features, train, rounds=spec.rounds, seed=spec.seed, on_round=times.append,
        n=len(sites), per_round=spec.sites_per_round,
        instrument=lambda cls: plain_app.time_round_methods(cls, _STRATEGY_S),
    )  # fmt: skip
    plain_app.simulate(server, len(sites))
    return times, {}


# --------------------------------------------------------------------------- driver


def measure(n: int, args: argparse.Namespace, first: str) -> dict[str, Any]:
    """``args.pairs`` paired runs of both sides at ``n`` sites, order alternating (A B, B A, ...)."""
    runners = {"fedcore": run_fedcore, "plain": run_plain}
    second = "plain" if first == "fedcore" else "fedcore"
    out: dict[str, Any] = {"sites": n, "loadavg_start": _load(), "pairs": []}
    with tempfile.TemporaryDirectory(prefix=f"fedcore-scale-{n}-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        sites = make_sites(n, args.rows, folder)
        per_round = min(args.per_round, n)
        job = make_job(folder, rounds=args.rounds + 1, per_round=per_round, local_steps=args.steps)
        out["make_sites_s"] = round(time.perf_counter() - t0, 2)
        for k in range(args.pairs):
            order = (first, second) if k % 2 == 0 else (second, first)
            pair: dict[str, Any] = {"order": list(order), "loadavg_start": _load()}
            for side in order:
                probe = folder / f"probe-{side}-{k}"
                probe.mkdir()
                os.environ[plain_app.CPU_LOG_ENV] = str(probe)  # Ray's workers inherit it at ray.init
                t0 = time.perf_counter()
                with PeakRss() as rss:
                    times, extra = runners[side](sites, job, folder)
                wall = time.perf_counter() - t0
                extra["handler_ms"] = _handler_ms(probe, 2, args.rounds)
                extra["coordinator_s_per_round"] = extra.pop(
                    "coordinator_round_methods_s", _coordinator_s(args.rounds)
                )
                _STRATEGY_S.clear()
                if len(times) != args.rounds + 1:
                    raise RuntimeError(f"{side} finished {len(times)} of {args.rounds + 1} rounds")
                timed = times[1:]  # round 1 is a warm-up
                pair[f"{side}_round_seconds"] = [round(t, 4) for t in times]
                pair[f"{side}_mean_s"] = round(statistics.fmean(timed), 4)
                pair[f"{side}_median_s"] = round(statistics.median(timed), 4)
                pair[f"{side}_peak_rss_mb"] = round(rss.peak_mb, 1)
                pair[f"{side}_sim_wall_s"] = round(wall, 1)
                pair |= {f"{side}_{key}": v for key, v in extra.items()}
                print(
                    f"  {n:5d} sites, pair {k + 1}/{args.pairs}, {side:8s} "
                    f"{pair[f'{side}_mean_s']:.3f} s/round (mean; median {pair[f'{side}_median_s']:.3f}), "
                    f"peak RSS {rss.peak_mb:.0f} MB, sim wall {wall:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
            pair["ratio"] = round(pair["fedcore_mean_s"] / pair["plain_mean_s"], 4)
            pair["ratio_of_medians"] = round(pair["fedcore_median_s"] / pair["plain_median_s"], 4)
            pair["loadavg_end"] = _load()
            out["pairs"].append(pair)
        if args.profile_sites:
            out["site_profile"] = site_breakdown(APP_DIR, sites, job)
    pairs = out["pairs"]
    for side in ("fedcore", "plain"):
        out[f"{side}_seconds_per_round"] = round(statistics.median(p[f"{side}_mean_s"] for p in pairs), 4)
        out[f"{side}_peak_rss_mb"] = max(p[f"{side}_peak_rss_mb"] for p in pairs)
        out[f"{side}_sim_wall_s"] = round(statistics.median(p[f"{side}_sim_wall_s"] for p in pairs), 1)
    ratios = [p["ratio"] for p in pairs]
    out["ratio"] = round(statistics.median(ratios), 4)
    out["ratio_min"], out["ratio_max"] = min(ratios), max(ratios)
    out["ratio_of_medians"] = round(statistics.median(p["ratio_of_medians"] for p in pairs), 4)
    out["loadavg_end"] = _load()
    return out


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", default="10,100,1000", help="comma-separated site counts")
    ap.add_argument("--per-round", type=int, default=10, help="sites sampled per round (both sides)")
    ap.add_argument("--rounds", type=int, default=30, help="timed rounds (one warm-up round more is run)")
    ap.add_argument("--pairs", type=int, default=3, help="paired runs of both sides per site count")
    ap.add_argument("--quick", action="store_true", help="10 and 100 sites, 1 pair of 4 timed rounds")
    ap.add_argument(
        "--no-profile-sites", dest="profile_sites", action="store_false",
        help="skip the in-process per-message site profile",
    )  # fmt: skip
    ap.add_argument("--steps", type=int, default=20, help="local SGD steps per round")
    ap.add_argument("--rows", type=int, default=40, help="rows per generated site")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.sites, args.rounds, args.pairs = "10,100", 4, 1
    if args.rounds < 4 and args.profile_sites:
        ap.error("the site profile needs a job of >= 5 rounds: --rounds >= 4 or --no-profile-sites")
    counts = [int(s) for s in args.sites.split(",") if s.strip()]
    here = str(Path(__file__).resolve().parent)  # Ray workers import _plain_flower_app from here
    paths = (here, str(ROOT), os.environ.get("PYTHONPATH"))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    t_start, load_start = time.perf_counter(), _load()
    points: dict[str, Any] = {}
    for i, n in enumerate(counts):
        points[str(n)] = measure(n, args, "fedcore" if i % 2 == 0 else "plain")
        result = _result(args, points, counts, t_start, load_start)  # written after every point
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    _print_table(result)
    print(f"wrote {args.out}")
    return 0


def _result(
    args: argparse.Namespace,
    points: dict[str, Any],
    counts: list[int],
    t_start: float,
    load_start: list[float],
) -> dict[str, Any]:
    return {
        "definitions": DEFINITIONS,
        "machine": machine(),
        "loadavg": {"start": load_start, "end": _load()},
        "quick": args.quick,
        "per_round": args.per_round,
        "timed_rounds": args.rounds,
        "pairs": args.pairs,
        "local_steps": args.steps,
        "rows_per_site": args.rows,
        "model": "logreg (torch nn.Linear), SGD, as jobs/fedavg.toml of examples/medical",
        "target": f"fedcore seconds per round <= {TARGET} x plain Flower's at the largest site count",
        "complete": len(points) == len(counts),
        "meets_target": points[str(max(counts))]["ratio"] <= TARGET if str(max(counts)) in points else None,
        "points": points,
        "total_wall_s": round(time.perf_counter() - t_start, 1),
    }


def _print_table(res: dict[str, Any]) -> None:
    n, rounds, pairs = res["per_round"], res["timed_rounds"], res["pairs"]
    print(f"\nfedcore vs plain Flower, {n} sites sampled per round, {pairs} pairs x {rounds} timed rounds")
    head = ("sites", "fedcore s/r", "plain s/r", "ratio", "min", "max", "of medians", "fedcore MB")
    head += ("plain MB", "fedcore wall", "plain wall")
    print("".join(f"{h:>13s}" for h in head))
    for sites, p in res["points"].items():
        vals = (
            sites, f"{p['fedcore_seconds_per_round']:.3f}", f"{p['plain_seconds_per_round']:.3f}",
            f"{p['ratio']:.3f}", f"{p['ratio_min']:.3f}", f"{p['ratio_max']:.3f}",
            f"{p['ratio_of_medians']:.3f}",
            f"{p['fedcore_peak_rss_mb']:.0f}", f"{p['plain_peak_rss_mb']:.0f}",
            f"{p['fedcore_sim_wall_s']:.1f}", f"{p['plain_sim_wall_s']:.1f}",
        )  # fmt: skip
        print("".join(f"{v:>13s}" for v in vals))
    for sites, p in res["points"].items():
        first = p["pairs"][0]
        parts = first.get("fedcore_coordinator_ms_per_round", {})
        print(
            f"{sites} sites, fedcore coordinator ms/round (pair 1): "
            + ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
        )
        hms = ", ".join(
            f"{k} {first[f'{side}_handler_ms'].get(k, 0):.1f}"
            for side in ("fedcore", "plain")
            for k in ("train", "evaluate")
        )
        print(f"{sites} sites, handler ms, pair 1 (fedcore train, evaluate; plain train, evaluate): {hms}")
        prof = p.get("site_profile", {})
        for key in ("train cold", "train warm", "evaluate cold", "evaluate warm"):
            if f"{key} ms" in prof:
                parts = prof.get(f"{key} parts_ms", {})
                print(
                    f"  site {key}: {prof[f'{key} ms']:.1f} ms; profiled: "
                    + ", ".join(f"{k.strip()} {v:.1f}" for k, v in parts.items() if v)
                )
        print(f"{sites} sites, load average start {p['loadavg_start']}, end {p['loadavg_end']}")
    print(f"target ({res['target']}): {'met' if res['meets_target'] else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
