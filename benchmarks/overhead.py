"""Benchmark fedcore's own per-round overhead against plain Flower FedAvg, in one process.

Both sides run the medical example's four sites (cleveland, hungary, switzerland, va) through
``flwr.simulation.run_simulation`` (Ray backend, 1 CPU per virtual node), with the same model
(torch logistic regression), the same preprocessed arrays (``fedcore.data.prepare_site``), the same
local steps, batch size, SGD learning rate and ``torch.set_num_threads(1)``. Each round is train on
all sites + evaluate on all sites' test sets, on both sides.

* fedcore: ``fedcore.flower.simulation.simulate`` on ``examples/medical`` with the fedavg job;
  seconds per round = ``RoundLog.seconds`` (``FedcoreStrategy.configure_train`` ..
  ``aggregate_evaluate``).
* plain Flower: ``flwr.serverapp.strategy.FedAvg`` (subclassed only to time the same window,
  ``configure_train`` .. ``aggregate_evaluate``) and a plain ``ClientApp`` with ``@app.train()`` /
  ``@app.evaluate()`` handlers written as Flower's examples write them.

Ray start-up and data loading are outside the timed window (both ServerApps query every site
once before round 1: fedcore for its schema check, plain Flower as a warm-up); round 1 is also
dropped from the per-round statistic on both sides. The sides alternate order across repeats
(A B, B A, A B, ...) because the machine is noisy. See DEFINITIONS for every number.

Run ``python benchmarks/overhead.py`` (3 repeats x 15 rounds) or ``--quick`` (1 repeat x 5
rounds). Writes ``benchmarks/results/overhead.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from _machine import machine

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = ROOT / "examples" / "medical"
JOB_FILE = APP_DIR / "jobs" / "fedavg.toml"
SITE_NAMES = ("cleveland", "hungary", "switzerland", "va")
SITES = [APP_DIR / "sites" / f"{s}.toml" for s in SITE_NAMES]
RESULTS = Path(__file__).resolve().parent / "results" / "overhead.json"

DEFINITIONS = {
    "round_seconds": "wall seconds of one round measured inside the ServerApp, from the "
    "strategy's configure_train to the end of its aggregate_evaluate (train on all sites + "
    "evaluate on all sites, including Flower's message transport and polling); Ray start-up "
    "and site data loading excluded",
    "per_repeat_median_s": "median of round_seconds over rounds 2..R of one simulation (round 1 "
    "dropped: Ray actors warming up and loading site data)",
    "fedcore_s_per_round / plain_s_per_round": "median over repeats of per_repeat_median_s",
    "ratio": "fedcore_s_per_round / plain_s_per_round (target <= 1.05)",
    "ratio_per_repeat": "fedcore / plain per_repeat_median_s within each repeat (same Ray "
    "session pair, adjacent in time)",
    "ratio_mean": "mean round_seconds over rounds 2..R, all repeats pooled: fedcore / plain",
    "note": "Flower's in-memory grid polls replies every 0.1 s and the simulation engine feeds "
    "messages every 0.1 s, so a round's wall time is dominated by 0.1 s polling steps that both "
    "sides share; a difference smaller than a polling step shows up only as a shift in how often "
    "a phase spills into the next step",
}


# --------------------------------------------------------------------------- plain Flower side
# Everything the plain ClientApp needs lives at module level, so that Ray workers import these
# functions by reference (``import overhead``; Ray puts the script's directory on the workers'
# sys.path) and the per-process data cache lasts across rounds, as fedcore's SiteRuntime cache does.

_DATA: dict[int, Any] = {}


def _site_data(partition_id: int) -> Any:
    """The site's preprocessed arrays, loaded once per worker process (as fedcore does)."""
    if partition_id not in _DATA:
        import torch

        from fedcore.config import load_site
        from fedcore.data import prepare_site

        torch.set_num_threads(1)
        _DATA[partition_id] = prepare_site(load_site(SITES[partition_id]))
    return _DATA[partition_id]


def make_plain_client_app() -> Any:
    import numpy as np
    import torch
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from sklearn.metrics import average_precision_score, roc_auc_score
    from torch import nn

    app = ClientApp()

    @app.query()
    def warm_up(msg: Message, context: Context) -> Message:
        """Load the site's data before round 1, as fedcore's schema query does (not timed)."""
        data = _site_data(int(context.node_config["partition-id"]))
        return Message(content=RecordDict({"metrics": MetricRecord({"n": len(data.y_train)})}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        data = _site_data(pid)
        cfg = msg.content["config"]
        model = nn.Linear(data.x_train.shape[1], 1)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
        gen = torch.Generator().manual_seed(int(cfg["seed"]) * 1000 + int(cfg["server-round"]) * 10 + pid)
        opt = torch.optim.SGD(model.parameters(), lr=float(cfg["lr"]))
        loss_fn = nn.BCEWithLogitsLoss()
        steps, bs = int(cfg["local-steps"]), int(cfg["batch-size"])
        model.train()
        total, done = 0.0, 0
        while done < steps:
            for idx in torch.split(torch.randperm(len(x), generator=gen), bs):
                if done == steps:
                    break
                opt.zero_grad()
                loss = loss_fn(model(x[idx]).squeeze(-1), y[idx])
                loss.backward()
                opt.step()
                total += loss.item()
                done += 1
        content = RecordDict(
            {
                "arrays": ArrayRecord(model.state_dict()),
                "metrics": MetricRecord({"train_loss": total / steps, "num-examples": len(y)}),
            }
        )
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        data = _site_data(int(context.node_config["partition-id"]))
        model = nn.Linear(data.x_test.shape[1], 1)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        model.eval()
        with torch.no_grad():
            p = torch.sigmoid(model(torch.from_numpy(data.x_test)).squeeze(-1)).double().numpy()
        y = data.y_test
        eps = 1e-12
        metrics = {
            "accuracy": float(np.mean((p >= 0.5) == (y >= 0.5))),
            "loss": float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))),
            "num-examples": len(y),
        }
        if 0 < y.sum() < len(y):
            metrics["auc"] = float(roc_auc_score(y, p))
            metrics["auprc"] = float(average_precision_score(y, p))
        return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


def make_plain_server_app(
    num_features: int, train: dict[str, Any], rounds: int, seed: int, on_round: Callable[[float], None]
) -> Any:
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from torch import nn

    class TimedFedAvg(FedAvg):
        """Flower's FedAvg, timed over the same window as FedcoreStrategy's RoundLog.seconds."""

        _t0 = 0.0

        def configure_train(
            self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
        ) -> Iterable[Message]:
            self._t0 = time.perf_counter()
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
            out = super().aggregate_evaluate(server_round, replies)
            on_round(time.perf_counter() - self._t0)
            return out

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        n = len(SITES)
        # Same pre-round step as fedcore's run_job (_wait_for_nodes + _describe_sites): wait for the
        # nodes and query each once, so data loading and actor start-up fall before round 1 here too.
        while len(nodes := list(grid.get_node_ids())) < n:
            time.sleep(0.5)
        queries = [
            Message(
                RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type=MessageType.QUERY
            )
            for node in nodes
        ]
        replies = list(grid.send_and_receive(queries, timeout=600))
        if len(replies) < n or any(r.has_error() for r in replies):
            raise RuntimeError("a plain-Flower site failed the warm-up query")
        torch.manual_seed(seed)
        model = nn.Linear(num_features, 1)
        strategy = TimedFedAvg(min_train_nodes=n, min_evaluate_nodes=n, min_available_nodes=n)
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=rounds,
            train_config=ConfigRecord(
                {
                    "lr": float(train["lr"]),
                    "local-steps": int(train["local_steps"]),
                    "batch-size": int(train["batch_size"]),
                    "seed": seed,
                }
            ),
        )

    return app


def run_plain(rounds: int) -> list[float]:
    import logging
    import warnings

    from flwr.simulation import run_simulation

    from fedcore.config import load_job, load_site
    from fedcore.data import prepare_site

    job = load_job(JOB_FILE)
    train = dict(job.table["train"])
    if str(train.get("optimizer", "sgd")) != "sgd":
        raise SystemExit("this benchmark's plain side implements SGD only")
    num_features = len(prepare_site(load_site(SITES[0])).features)
    times: list[float] = []
    logging.getLogger("flwr").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(
            server_app=make_plain_server_app(num_features, train, rounds, job.seed, times.append),
            client_app=make_plain_client_app(),
            num_supernodes=len(SITES),
            backend_config={  # as fedcore.flower.simulation.simulate passes it
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"logging_level": "ERROR", "log_to_driver": False},
            },
            verbose_logging=False,
        )
    if len(times) != rounds:
        raise RuntimeError(f"plain Flower run finished {len(times)} of {rounds} rounds")
    return times


# --------------------------------------------------------------------------- fedcore side


def run_fedcore(rounds: int) -> list[float]:
    import tempfile

    from fedcore.clients.guard import init_site_state
    from fedcore.config import load_site
    from fedcore.flower.simulation import simulate

    logs: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="fedcore-overhead-") as out:
        for site in SITES:  # each simulated site's ledger and audit log, as `fedcore run` creates them
            init_site_state(load_site(site), Path(out) / "sites")
        simulate(
            APP_DIR,
            JOB_FILE,
            SITES,
            overrides=[f"job.rounds={rounds}"],
            out_dir=Path(out),
            on_round=logs.append,
        )
    if len(logs) != rounds:
        raise RuntimeError(f"fedcore run finished {len(logs)} of {rounds} rounds")
    return [float(r.seconds) for r in logs]


# --------------------------------------------------------------------------- driver


def _median_after_first(times: list[float]) -> float:
    return statistics.median(times[1:] if len(times) > 1 else times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 repeat x 5 rounds")
    ap.add_argument("--rounds", type=int, help="rounds per simulation (default 15, quick 5)")
    ap.add_argument("--repeats", type=int, help="simulations per side (default 3, quick 1)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    rounds = args.rounds or (5 if args.quick else 15)
    repeats = args.repeats or (1 if args.quick else 3)
    if rounds < 2:
        ap.error("--rounds must be >= 2 (round 1 is dropped as warm-up)")

    from fedcore.config import load_job

    train = dict(load_job(JOB_FILE).table["train"])
    runners = {"fedcore": run_fedcore, "plain": run_plain}
    runs: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for rep in range(repeats):
        order = ("fedcore", "plain") if rep % 2 == 0 else ("plain", "fedcore")
        for side in order:
            t0 = time.perf_counter()
            times = runners[side](rounds)
            runs.append(
                {
                    "repeat": rep,
                    "side": side,
                    "round_seconds": [round(t, 6) for t in times],
                    "median_s": _median_after_first(times),
                    "wall_s_incl_startup": time.perf_counter() - t0,
                }
            )
            print(
                f"  repeat {rep + 1}/{repeats} {side:8s} median {runs[-1]['median_s']:.4f} s/round "
                f"(sim wall {runs[-1]['wall_s_incl_startup']:.1f} s)",
                file=sys.stderr,
                flush=True,
            )

    def per_rep(side: str) -> list[float]:
        return [r["median_s"] for r in sorted(runs, key=lambda r: r["repeat"]) if r["side"] == side]

    def pooled(side: str) -> list[float]:
        return [t for r in runs if r["side"] == side for t in r["round_seconds"][1:]]

    fed, plain = per_rep("fedcore"), per_rep("plain")
    fed_s, plain_s = statistics.median(fed), statistics.median(plain)
    ratio = fed_s / plain_s
    result = {
        "definitions": DEFINITIONS,
        "machine": machine(),
        "quick": args.quick,
        "job": str(JOB_FILE.relative_to(ROOT)),
        "sites": list(SITE_NAMES),
        "rounds": rounds,
        "repeats": repeats,
        "local_steps": int(train["local_steps"]),
        "batch_size": int(train["batch_size"]),
        "optimizer": str(train.get("optimizer", "sgd")),
        "lr": float(train["lr"]),
        "ratio": round(ratio, 4),
        "target": 1.05,
        "meets_target": ratio <= 1.05,
        "fedcore_s_per_round": round(fed_s, 6),
        "plain_s_per_round": round(plain_s, 6),
        "ratio_per_repeat": [round(f / p, 4) for f, p in zip(fed, plain, strict=True)],
        "ratio_mean": round(statistics.mean(pooled("fedcore")) / statistics.mean(pooled("plain")), 4),
        "fedcore_per_repeat_median_s": [round(x, 6) for x in fed],
        "plain_per_repeat_median_s": [round(x, 6) for x in plain],
        "runs": runs,
        "total_wall_s": round(time.perf_counter() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")

    print(
        f"\nfedcore vs plain Flower FedAvg: {len(SITES)} sites, {rounds} rounds x {repeats} repeats, "
        f"{result['local_steps']} local steps, batch {result['batch_size']}"
    )
    print(f"{'':10s} {'s/round (median)':>17s} {'per repeat':>30s} {'mean r2..R':>11s}")
    for name, vals in (("plain", plain), ("fedcore", fed)):
        per = " ".join(f"{v:.4f}" for v in vals)
        print(f"{name:10s} {statistics.median(vals):17.4f} {per:>30s} {statistics.mean(pooled(name)):11.4f}")
    print(
        f"{'ratio':10s} {ratio:17.4f} {' '.join(f'{r:.4f}' for r in result['ratio_per_repeat']):>30s} "
        f"{result['ratio_mean']:11.4f}"
    )
    print(f"target <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    # Run as the module ``overhead`` (not ``__main__``) so that cloudpickle sends the plain
    # ClientApp's functions to Ray workers by reference; see _DATA above.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import overhead

    sys.exit(overhead.main())
