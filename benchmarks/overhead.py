"""Benchmark fedcore's per-round overhead against plain Flower FedAvg, paired, in one process.

Both sides run the medical example's four sites (cleveland, hungary, switzerland, va) through
Flower's simulation engine (``_run_simulation``, Ray backend, 1 CPU per virtual node), with the same model
(torch logistic regression), the same preprocessed arrays (``fedcore.data.prepare_site``), the same
local steps, batch size, SGD learning rate and ``torch.set_num_threads(1)``. Each round is train on
all sites + evaluate on all sites' test sets, on both sides.

* fedcore: ``fedcore.flower.simulation.simulate`` on ``examples/medical`` with the fedavg job;
  seconds per round = ``RoundLog.seconds`` (``FedcoreStrategy.configure_train`` ..
  ``aggregate_evaluate``).
* plain Flower: ``flwr.serverapp.strategy.FedAvg`` (subclassed only to time the same window) and
  the module-level ClientApp of ``_plain_flower_app.py`` (Ray pickles references to its handlers,
  not closures by value, with every message).

Both ClientApps sit behind the same mod, ``_plain_flower_app.cpu_probe``, which records each
handler's CPU and wall time per message. Ray start-up and data loading are outside the timed
window (both ServerApps query every site once before round 1); round 1 is also dropped. Each
repeat is a pair of simulations, in A B / B A order, and the statistic is the ratio within a pair.
See DEFINITIONS for every number.

Run ``python benchmarks/overhead.py`` (6 pairs x 31 rounds, about 5 minutes on 2 cores) or
``--quick`` (1 pair x 4 rounds). Writes ``benchmarks/results/overhead.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import _plain_flower_app as plain_app
from _coordinator_profile import CoordinatorProfile, timed_sum
from _machine import machine

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = ROOT / "examples" / "medical"
JOB_FILE = APP_DIR / "jobs" / "fedavg.toml"
SITE_NAMES = ("cleveland", "hungary", "switzerland", "va")
SITES = [APP_DIR / "sites" / f"{s}.toml" for s in SITE_NAMES]
RESULTS = Path(__file__).resolve().parent / "results" / "overhead.json"
POLL_S = 0.1  # flwr.superlink.grid.inmemory_grid.InMemoryGrid(pull_interval=0.1)

DEFINITIONS = {
    "round_seconds": "wall seconds of one round measured inside the ServerApp, from the strategy's "
    "configure_train to the end of its aggregate_evaluate (train on all sites + evaluate on all sites, "
    "including Flower's message transport and reply polling); Ray start-up and data loading excluded",
    "rounds": "timed rounds per simulation (rounds 2..rounds_run; round 1 dropped as warm-up); each "
    "side runs `repeats` simulations, so rounds x repeats rounds per side in all",
    "median_s": "median round_seconds of one simulation (rounds 2..rounds_run)",
    "paired_ratios": "per repeat: fedcore median_s / plain median_s, the two simulations of one pair "
    "adjacent in time (order A B, then B A, alternating)",
    "ratio / ratio_min / ratio_max": "median / min / max of paired_ratios",
    "process_wall_ratio": "median over pairs of fedcore / plain wall seconds of the whole simulation "
    "call (Ray start-up, data loading, all rounds, shutdown); _min/_max likewise",
    "handler_cpu": "per side and message type, from the cpu_probe mod around each ClientApp handler "
    "(rounds >= 2 only): mean time.process_time() (the worker process, including Ray's threads), "
    "mean time.thread_time() (the handler's thread) and mean wall ms per message; "
    "cpu_s_per_round = process CPU summed over a round's train and evaluate messages (all sites)",
    "coordinator_ms_per_round": "per side, the median over its simulations of the ms per timed round "
    "spent inside the strategy's four round methods (configure_train, aggregate_train, "
    "configure_evaluate, aggregate_evaluate) in the ServerApp; for fedcore also the parts inside them "
    "(benchmarks/_coordinator_profile.py): reply checks, aggregator, checkpoint write, and the job's "
    "outputs (metrics.json; once per job, total ms). The rest of a round is Flower's transport and "
    "polling and the sites' handlers",
    "loadavg": "os.getloadavg() (1, 5, 15 min) when the benchmark started and when it ended",
    "pickle_ms_per_message": "mean ms of ray.cloudpickle.dumps(ClientApp) in the driver: Ray "
    "pickles the ClientApp loader with every message it sends to an actor",
    "polling": f"Flower's InMemoryGrid polls for replies every {POLL_S} s (pull_interval), and a round "
    "is two send_and_receive calls (train, evaluate), so round_seconds moves in steps of about 0.1 s "
    "on both sides; a difference smaller than a step shows up only as a shift in how often a phase "
    "spills into the next step. round_durations_10ms lists the distinct round_seconds rounded to "
    "10 ms with their counts, per side",
}


# --------------------------------------------------------------------------- plain Flower side
# The ClientApp, its handlers and the coordinator live in _plain_flower_app.py (module level).


_PLAIN_S: list[tuple[int, float]] = []  # (round, seconds) inside plain FedAvg's round methods


def run_plain(rounds: int) -> tuple[list[float], dict[str, float]]:
    from fedcore.config import load_job, load_site
    from fedcore.data import prepare_site

    job = load_job(JOB_FILE)
    train = dict(job.table["train"])
    if str(train.get("optimizer", "sgd")) != "sgd":
        raise SystemExit("this benchmark's plain side implements SGD only")
    num_features = len(prepare_site(load_site(SITES[0])).features)
    times: list[float] = []
    server = plain_app.make_server_app(
        num_features, train, rounds=rounds, seed=job.seed, on_round=times.append, n=len(SITES),
        instrument=lambda cls: plain_app.time_round_methods(cls, _PLAIN_S),
    )  # fmt: skip
    _PLAIN_S.clear()
    plain_app.simulate(server, len(SITES))
    if len(times) != rounds:
        raise RuntimeError(f"plain Flower run finished {len(times)} of {rounds} rounds")
    ms = sum(s for r, s in _PLAIN_S if r >= 2) * 1e3 / (rounds - 1)
    return times, {"round methods": round(ms, 3)}


# --------------------------------------------------------------------------- fedcore side


def _probed_fedcore_app(*args: Any, **kwargs: Any) -> Any:
    from fedcore.flower.client_app import make_client_app

    return plain_app.with_cpu_probe(make_client_app(*args, **kwargs))


def run_fedcore(rounds: int) -> tuple[list[float], dict[str, float]]:
    from fedcore.config import load_site
    from fedcore.flower import simulation
    from fedcore.site.guard import init_site_state

    logs: list[Any] = []
    simulation.make_client_app = _probed_fedcore_app  # type: ignore[assignment]  # same probe as plain
    with tempfile.TemporaryDirectory(prefix="fedcore-overhead-") as out, CoordinatorProfile() as prof:
        for site in SITES:  # each simulated site's ledger and audit log, as `fedcore run` creates them
            init_site_state(load_site(site), Path(out) / "sites")
        simulation.simulate(
            APP_DIR,
            JOB_FILE,
            SITES,
            overrides=[f"job.rounds={rounds}"],
            out_dir=Path(out),
            on_round=logs.append,
        )
    if len(logs) != rounds:
        raise RuntimeError(f"fedcore run finished {len(logs)} of {rounds} rounds")
    parts = prof.per_round(2, rounds - 1)
    return [float(r.seconds) for r in logs], {"round methods": timed_sum(parts), **parts}


# --------------------------------------------------------------------------- measurements


def _pickle_ms() -> dict[str, float]:
    """Mean ms to pickle each side's ClientApp, as Ray does with every message."""
    from ray import cloudpickle

    with tempfile.TemporaryDirectory() as state:
        apps = {
            "fedcore": _probed_fedcore_app(APP_DIR, sites=SITES, state_dir=Path(state)),
            "plain": plain_app.app,
        }
        out = {}
        for side, app in apps.items():
            cloudpickle.dumps(app)
            t0 = time.perf_counter()
            for _ in range(20):
                cloudpickle.dumps(app)
            out[side] = round((time.perf_counter() - t0) / 20 * 1e3, 4)
    return out


def _read_cpu(folder: Path) -> list[tuple[str, int, float, float, float]]:
    rows = []
    for f in folder.glob("*.tsv"):
        for line in f.read_text().splitlines():
            kind, rnd, cpu, thread, wall = line.split("\t")
            rows.append((kind, int(rnd), float(cpu), float(thread), float(wall)))
    return rows


def _cpu_summary(rows: list[tuple[str, int, float, float, float]], timed_rounds: int) -> dict[str, Any]:
    rows = [r for r in rows if r[1] >= 2]
    out: dict[str, Any] = {}
    for kind in ("train", "evaluate"):
        sel = [r for r in rows if r[0] == kind]
        if not sel:
            raise RuntimeError(
                f"the cpu probe recorded no {kind} messages (is {plain_app.CPU_LOG_ENV} passed to Ray?)"
            )
        out[kind] = {
            "messages": len(sel),
            "process_cpu_ms": round(statistics.mean(r[2] for r in sel) * 1e3, 3),
            "thread_cpu_ms": round(statistics.mean(r[3] for r in sel) * 1e3, 3),
            "wall_ms": round(statistics.mean(r[4] for r in sel) * 1e3, 3),
        }
    out["cpu_s_per_round"] = round(sum(r[2] for r in rows) / timed_rounds, 5)
    return out


def _durations(times: Iterable[float]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in sorted(times):
        key = f"{round(t, 2):.2f}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


# --------------------------------------------------------------------------- driver


def _run_pairs(rounds_run: int, repeats: int, cpu_dir: Path) -> list[dict[str, Any]]:
    runners: dict[str, Callable[[int], tuple[list[float], dict[str, float]]]] = {
        "fedcore": run_fedcore,
        "plain": run_plain,
    }
    runs: list[dict[str, Any]] = []
    for rep in range(repeats):
        for side in ("fedcore", "plain") if rep % 2 == 0 else ("plain", "fedcore"):
            folder = cpu_dir / f"{rep}-{side}"
            folder.mkdir()
            os.environ[plain_app.CPU_LOG_ENV] = str(folder)  # Ray's workers inherit it at ray.init
            t0 = time.perf_counter()
            times, coordinator = runners[side](rounds_run)
            wall = time.perf_counter() - t0
            run = {"repeat": rep, "side": side, "round_seconds": [round(t, 6) for t in times]}
            run["coordinator_ms_per_round"] = coordinator
            run |= {
                "median_s": statistics.median(times[1:]),
                "wall_s": round(wall, 3),
                "cpu": _read_cpu(folder),
            }
            runs.append(run)
            print(
                f"  pair {rep + 1}/{repeats} {side:8s} median {run['median_s']:.4f} s/round "
                f"(sim wall {wall:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 pair x 4 rounds (3 timed)")
    ap.add_argument("--rounds", type=int, help="timed rounds per simulation (default 30, quick 3)")
    ap.add_argument("--repeats", type=int, help="pairs of simulations (default 6, quick 1)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 30)
    repeats = args.repeats or (1 if args.quick else 6)
    if rounds < 1 or repeats < 1:
        ap.error("--rounds and --repeats must be >= 1")
    here = str(Path(__file__).resolve().parent)  # Ray workers import _plain_flower_app from here
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (here, str(ROOT), os.environ.get("PYTHONPATH")) if p
    )

    from fedcore.config import load_job

    train = dict(load_job(JOB_FILE).table["train"])
    t_start, load_start = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="overhead-cpu-") as cpu_dir:
        runs = _run_pairs(rounds + 1, repeats, Path(cpu_dir))
    pairs = [{r["side"]: r for r in runs if r["repeat"] == rep} for rep in range(repeats)]
    paired = [p["fedcore"]["median_s"] / p["plain"]["median_s"] for p in pairs]
    walls = [p["fedcore"]["wall_s"] / p["plain"]["wall_s"] for p in pairs]
    sides: dict[str, Any] = {}
    for side in ("fedcore", "plain"):
        mine = [r for r in runs if r["side"] == side]
        pooled = [t for r in mine for t in r["round_seconds"][1:]]
        sides[side] = {
            "s_per_round_median_of_runs": round(statistics.median(r["median_s"] for r in mine), 6),
            "s_per_round_pooled_median": round(statistics.median(pooled), 6),
            "s_per_round_pooled_mean": round(statistics.mean(pooled), 6),
            "sim_wall_s_median": round(statistics.median(r["wall_s"] for r in mine), 3),
            "handler_cpu": _cpu_summary([row for r in mine for row in r["cpu"]], rounds * repeats),
            "round_durations_10ms": _durations(pooled),
            "coordinator_ms_per_round": {
                k: round(statistics.median(r["coordinator_ms_per_round"][k] for r in mine), 3)
                for k in mine[0]["coordinator_ms_per_round"]
            },
        }
    pickle_ms = _pickle_ms()
    ratio, wall_ratio = _spread(paired), _spread(walls)
    result = {
        "definitions": DEFINITIONS,
        "machine": machine(),
        "loadavg": {
            "start": [round(x, 2) for x in load_start],
            "end": [round(x, 2) for x in os.getloadavg()],
        },
        "quick": args.quick,
        "job": str(JOB_FILE.relative_to(ROOT)),
        "sites": list(SITE_NAMES),
        "rounds": rounds,
        "rounds_run": rounds + 1,
        "repeats": repeats,
        "rounds_per_side": rounds * repeats,
        "local_steps": int(train["local_steps"]),
        "batch_size": int(train["batch_size"]),
        "optimizer": str(train.get("optimizer", "sgd")),
        "lr": float(train["lr"]),
        "plain_handlers": "module level (_plain_flower_app.py)",
        "ratio": ratio["median"],
        "ratio_min": ratio["min"],
        "ratio_max": ratio["max"],
        "target": 1.05,
        "meets_target": ratio["median"] <= 1.05,
        "paired_ratios": [round(r, 4) for r in paired],
        "process_wall_ratio": wall_ratio["median"],
        "process_wall_ratio_min": wall_ratio["min"],
        "process_wall_ratio_max": wall_ratio["max"],
        "pickle_ms_per_message": pickle_ms,
        "sides": sides,
        "runs": [{k: v for k, v in r.items() if k != "cpu"} for r in runs],
        "total_wall_s": round(time.perf_counter() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    _print_table(result)
    print(f"wrote {args.out}")
    return 0


def _print_table(res: dict[str, Any]) -> None:
    print(
        f"\nfedcore vs plain Flower FedAvg: {len(res['sites'])} sites, {res['repeats']} pairs x "
        f"{res['rounds']} timed rounds, {res['local_steps']} local steps, batch {res['batch_size']}"
    )
    head = ("s/round", "sim wall s", "train cpu ms", "eval cpu ms", "cpu s/round", "pickle ms")
    print(f"{'':8s}" + "".join(f"{h:>13s}" for h in head))
    for side in ("plain", "fedcore"):
        s = res["sides"][side]
        cpu = s["handler_cpu"]
        vals = (
            f"{s['s_per_round_median_of_runs']:.4f}",
            f"{s['sim_wall_s_median']:.1f}",
            f"{cpu['train']['process_cpu_ms']:.2f}",
            f"{cpu['evaluate']['process_cpu_ms']:.2f}",
            f"{cpu['cpu_s_per_round']:.4f}",
            f"{res['pickle_ms_per_message'][side]:.3f}",
        )
        print(f"{side:8s}" + "".join(f"{v:>13s}" for v in vals))
    print(
        f"paired ratio (fedcore / plain s/round): median {res['ratio']:.4f}, min {res['ratio_min']:.4f}, "
        f"max {res['ratio_max']:.4f}; per pair {' '.join(f'{r:.3f}' for r in res['paired_ratios'])}"
    )
    print(
        f"process wall ratio: median {res['process_wall_ratio']:.4f} "
        f"(min {res['process_wall_ratio_min']:.4f}, max {res['process_wall_ratio_max']:.4f})"
    )
    for side in ("plain", "fedcore"):
        d = res["sides"][side]["round_durations_10ms"]
        print(f"round durations ({side}, 10 ms: count): " + ", ".join(f"{k}: {v}" for k, v in d.items()))
    for side in ("plain", "fedcore"):
        parts = res["sides"][side]["coordinator_ms_per_round"]
        print(f"coordinator ms/round ({side}): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    print(f"load average: start {res['loadavg']['start']}, end {res['loadavg']['end']}")
    print(f"target <= 1.05: {'met' if res['meets_target'] else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
