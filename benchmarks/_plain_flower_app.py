"""The plain-Flower side of ``overhead.py`` and ``scale.py`` (ClientApp and coordinator), and the
per-message CPU probe both sides share.

Everything here lives at module level, so that Ray pickles references to these functions with
every message (``_plain_flower_app.train``), not closures by value. The driver imports this module
under its own name (never as ``__main__``), and puts this folder on the workers' ``PYTHONPATH``.

The handlers follow Flower's examples (torch logistic regression, SGD, ``num-examples`` weight)
with fedcore's model, arrays (``fedcore.data.prepare_site``), local steps, batch size, learning
rate and ``torch.set_num_threads(1)``.

``cpu_probe`` is a Flower mod: it appends one line per message (message type, round, process CPU,
thread CPU and wall seconds of the handler) to ``$OVERHEAD_CPU_LOG/<pid>.tsv``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn

__all__ = [
    "CPU_LOG_ENV",
    "SITES",
    "SITES_ENV",
    "app",
    "cpu_probe",
    "make_server_app",
    "simulate",
    "with_cpu_probe",
]

ROOT = Path(__file__).resolve().parent.parent
SITES = [
    ROOT / "examples" / "medical" / "sites" / f"{s}.toml"
    for s in ("cleveland", "hungary", "switzerland", "va")
]
CPU_LOG_ENV = "OVERHEAD_CPU_LOG"
SITES_ENV = "PLAIN_FLOWER_SITES"  # a file listing one site file per line (scale.py's generated sites)

_DATA: dict[int, Any] = {}


def cpu_probe(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Time the handler below this mod: process CPU, thread CPU and wall seconds."""
    c0, t0, w0 = time.process_time(), time.thread_time(), time.perf_counter()
    reply = call_next(msg, context)
    cpu, thread, wall = time.process_time() - c0, time.thread_time() - t0, time.perf_counter() - w0
    folder = os.environ.get(CPU_LOG_ENV)
    if folder:
        config = msg.content.config_records.get("config")
        rnd = int(config.get("server-round", 0)) if config is not None else 0  # type: ignore[arg-type]
        with open(Path(folder) / f"{os.getpid()}.tsv", "a") as fh:
            fh.write(f"{msg.metadata.message_type}\t{rnd}\t{cpu:.6f}\t{thread:.6f}\t{wall:.6f}\n")
    return reply


class _Forward:
    """Hand a message to another ClientApp (fedcore's), so that ``cpu_probe`` can wrap it."""

    def __init__(self, inner: ClientApp) -> None:
        self.inner = inner

    def __call__(self, msg: Message, context: Context) -> Message:
        return self.inner(msg, context)


def with_cpu_probe(inner: ClientApp) -> ClientApp:
    """``inner`` (fedcore's ClientApp) behind ``cpu_probe``, for its query, train and evaluate."""
    outer = ClientApp(mods=[cpu_probe])
    forward = _Forward(inner)
    outer.query()(forward)
    outer.train()(forward)
    outer.evaluate()(forward)
    return outer


def _site_data(partition_id: int) -> Any:
    """The site's preprocessed arrays, loaded once per worker process (as fedcore's runtime cache does)."""
    if partition_id not in _DATA:
        from fedcore.config import load_site
        from fedcore.data import prepare_site

        torch.set_num_threads(1)
        listed = os.environ.get(SITES_ENV)
        sites = [Path(p) for p in Path(listed).read_text().split()] if listed else SITES
        _DATA[partition_id] = prepare_site(load_site(sites[partition_id]))
    return _DATA[partition_id]


app = ClientApp(mods=[cpu_probe])


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


# --------------------------------------------------------------------------- the coordinator
# Used by the benchmark drivers only (it runs in the driver and is never pickled); its imports stay
# inside, so Ray's workers import what they imported before.


ROUND_METHODS = ("configure_train", "aggregate_train", "configure_evaluate", "aggregate_evaluate")


def time_round_methods(cls: type, sink: list[tuple[int, float]]) -> None:
    """Append ``(round, seconds)`` to ``sink`` for every call of ``cls``'s four round methods (the
    coordinator's own work); a class already timed is left as it is."""
    for name in ROUND_METHODS:
        original = getattr(cls, name)
        if getattr(original, "_timed", False):
            continue

        def timed(self: Any, server_round: int, *a: Any, _f: Any = original, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _f(self, server_round, *a, **k)
            finally:
                sink.append((server_round, time.perf_counter() - t0))

        timed._timed = True  # type: ignore[attr-defined]
        setattr(cls, name, timed)


def make_server_app(
    num_features: int,
    train: dict[str, Any],
    *,
    rounds: int,
    seed: int,
    on_round: Callable[[float], None],
    n: int,
    per_round: int | None = None,
    instrument: Callable[[type], None] | None = None,
) -> Any:
    """Plain Flower's coordinator: wait for ``n`` nodes and query each once (as fedcore's describe
    step does, so data loading falls before round 1 on both sides), then FedAvg over ``per_round``
    sampled sites (all when None), timed over the same window as FedcoreStrategy's RoundLog.seconds.
    ``instrument`` is called with the strategy class before it is used."""
    from collections.abc import Iterable

    from flwr.app import ConfigRecord, MessageType
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

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

    if instrument is not None:
        instrument(TimedFedAvg)
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        while len(nodes := list(grid.get_node_ids())) < n:
            time.sleep(0.5)
        queries = [
            Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=i, message_type=MessageType.QUERY)
            for i in nodes
        ]
        replies = list(grid.send_and_receive(queries, timeout=3600))
        if len(replies) < n or any(r.has_error() for r in replies):
            raise RuntimeError("a plain-Flower site failed the warm-up query")
        torch.manual_seed(seed)
        model = nn.Linear(num_features, 1)
        k = n if per_round is None else per_round
        strategy = TimedFedAvg(
            fraction_train=k / n, fraction_evaluate=k / n, min_train_nodes=k, min_evaluate_nodes=k,
            min_available_nodes=n,
        )  # fmt: skip
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=rounds,
            timeout=3600,
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


def simulate(server_app: Any, num_supernodes: int) -> None:
    """Run ``server_app`` with this module's ClientApp in Flower's simulation engine, through the
    engine entry and backend settings fedcore's ``simulate`` uses."""
    import logging

    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    logging.getLogger("flwr").setLevel(logging.ERROR)
    _run_simulation(
        server_app=server_app,
        client_app=app,
        num_supernodes=num_supernodes,
        backend_config={  # as fedcore.flower.simulation.simulate passes it
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"logging_level": "ERROR", "log_to_driver": False},
        },
        verbose_logging=False,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
    )
