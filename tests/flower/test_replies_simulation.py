"""A real simulation in which one hospital's node sends a different bad train reply each round: the
coordinator rejects each with its reason, the rounds go on with the three valid sites, and
``summary.json`` and ``report.md`` list every rejection. The bad site is fedcore's real ClientApp
with its train replies rewritten on the way out, as a compromised node would."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import fedcore.flower.simulation
from fedcore.harness.runner import run_app

APP = Path(__file__).resolve().parents[2] / "examples" / "medical"
BAD_SITE = "va"


def _swap(reply: Message, msg: Message, **records: Any) -> Message:
    content = RecordDict({**{k: reply.content[k] for k in reply.content}, **records})
    return Message(content, reply_to=msg)


def _nan(reply: Message, msg: Message) -> Message:
    arrays = [a.numpy() for a in reply.content.array_records["arrays"].values()]
    arrays[0] = np.full_like(arrays[0], np.nan)
    return _swap(reply, msg, arrays=ArrayRecord(arrays))


def _float64(reply: Message, msg: Message) -> Message:
    arrays = [a.numpy().astype(np.float64) for a in reply.content.array_records["arrays"].values()]
    return _swap(reply, msg, arrays=ArrayRecord(arrays))


def _oversized(reply: Message, msg: Message) -> Message:
    record = reply.content.array_records["arrays"]
    first = record["0"]
    buf = io.BytesIO()
    np.save(buf, np.zeros(1_000_000, np.float32))  # 4 MB behind a label of the model's first tensor
    forged = ArrayRecord({k: record[k] for k in record})
    forged["0"] = Array(dtype=first.dtype, shape=tuple(first.shape), stype=first.stype, data=buf.getvalue())
    return _swap(reply, msg, arrays=forged)


def _negative_weight(reply: Message, msg: Message) -> Message:
    metrics = dict(reply.content.metric_records["metrics"])
    return _swap(reply, msg, metrics=MetricRecord({**metrics, "num-examples": -40.0}))


TAMPER: dict[int, Callable[[Message, Message], Message]] = {
    1: _nan,
    2: _float64,
    3: _oversized,
    4: _negative_weight,
}
REASONS = {1: "non-finite update", 2: "float64", 3: "(oversized payload)", 4: "num-examples -40"}


def _crafted(real: ClientApp) -> ClientApp:
    """``real``, except that the bad site's train replies are rewritten (round r: ``TAMPER[r]``)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        reply = real(msg, context)
        if reply.has_error() or str(reply.content.config_records["site"]["site"]) != BAD_SITE:
            return reply
        return TAMPER[int(msg.content.config_records["config"]["server-round"])](reply, msg)  # type: ignore[arg-type]

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return real(msg, context)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return real(msg, context)

    return app


@pytest.mark.slow
def test_bad_replies_are_rejected_with_reasons_in_summary_and_report(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_factory = fedcore.flower.simulation.make_client_app

    def factory(app_dir: Path | None = None, **kwargs: Any) -> ClientApp:
        return _crafted(real_factory(app_dir, **kwargs))

    monkeypatch.setattr(fedcore.flower.simulation, "make_client_app", factory)
    sets = ["job.min_sites=3", "train.local_steps=5"]
    summary = run_app(APP, out_dir=tmp_path, rounds=4, seed=3, sets=sets, baselines=False)

    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["rejected_replies"] == 4
    assert set(on_disk["rejected"]) == {"1", "2", "3", "4"}
    for rnd, reason in REASONS.items():
        assert list(on_disk["rejected"][str(rnd)]) == [BAD_SITE]
        assert reason in on_disk["rejected"][str(rnd)][BAD_SITE], on_disk["rejected"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [sorted(r["train"]) for r in metrics["rounds"]] == [["cleveland", "hungary", "switzerland"]] * 4
    assert len(summary["per_round_mean_accuracy"]) == 4 and (tmp_path / "model.npz").is_file()
    report = (tmp_path / "report.md").read_text()
    assert "## Rejected replies" in report and f"| 3 | {BAD_SITE} | site '{BAD_SITE}' sent" in report
    assert "DEPRECATED" not in (tmp_path / "simulation.log").read_text()  # Flower's current path
