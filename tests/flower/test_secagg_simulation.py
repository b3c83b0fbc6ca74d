"""The four hospitals under secure aggregation, through Flower: the default job's accuracy, and no
object the coordinator holds, no message it receives, ever carries one site's unmasked update."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcore.config import load_job
from fedcore.flower.secagg_server import SecAggRounds
from fedcore.flower.strategy import FedcoreStrategy
from fedcore.harness.runner import run_app
from fedcore.site.replies import ReplyStore
from tests.fl_loop import run_loop

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

APP = Path(__file__).resolve().parents[2] / "examples" / "medical"
SITES = ("cleveland", "hungary", "switzerland", "va")


def _arrays(obj: Any, seen: set[int], depth: int = 0) -> Iterator[np.ndarray]:
    """Every numpy array (bytes: read as uint32 words too) reachable from ``obj``."""
    if id(obj) in seen or depth > 12:
        return
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, bytes | bytearray) and len(obj) >= 56:
        for start in range(4):
            usable = (len(obj) - start) // 4 * 4
            yield np.frombuffer(obj[start : start + usable], dtype="<u4")
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _arrays(v, seen, depth + 1)
    elif isinstance(obj, list | tuple | set):
        for v in obj:
            yield from _arrays(v, seen, depth + 1)
    elif hasattr(obj, "__dict__") or hasattr(obj, "__dataclass_fields__"):
        for name in getattr(obj, "__dataclass_fields__", None) or vars(obj):
            yield from _arrays(getattr(obj, name, None), seen, depth + 1)


def _contains(haystack: np.ndarray, needle: np.ndarray) -> bool:
    """Whether ``needle`` (one site's update, as words or floats) appears in ``haystack``."""
    flat = np.asarray(haystack).ravel()
    k = needle.size
    if flat.size < k:
        return False
    if flat.dtype.kind == "f" and needle.dtype.kind == "f":
        return any(
            np.allclose(flat[i : i + k], needle, rtol=1e-6, atol=1e-9) for i in range(flat.size - k + 1)
        )
    return any(np.array_equal(flat[i : i + k].astype(np.uint32), needle) for i in range(flat.size - k + 1))


def test_secagg_matches_default_and_the_coordinator_never_holds_a_site_update(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held: list[Any] = []  # every object of the coordinator's, and every reply it receives
    send, finish, aggregate = SecAggRounds._send, SecAggRounds.finish, FedcoreStrategy.aggregate_train

    def send_spy(self: SecAggRounds, *a: Any, **k: Any) -> Any:
        replies = send(self, *a, **k)
        held.extend(replies)
        return replies

    def finish_spy(self: SecAggRounds, grid: Any, replies: Any, *a: Any) -> Any:
        held.extend(replies)
        out = finish(self, grid, replies, *a)
        held.extend([self, out])
        return out

    def aggregate_spy(self: FedcoreStrategy, *a: Any) -> Any:
        out = aggregate(self, *a)
        held.append(self)
        return out

    monkeypatch.setattr(SecAggRounds, "_send", send_spy)
    monkeypatch.setattr(SecAggRounds, "finish", finish_spy)
    monkeypatch.setattr(FedcoreStrategy, "aggregate_train", aggregate_spy)
    out = tmp_path / "secagg"
    summary = run_app(APP, job="secagg", out_dir=out, baselines=False)
    # the default job, plaintext, as the in-process loop computes it (what its Flower run matches:
    # tests/flower/test_simulation.py); the same seed
    default = run_loop(
        load_job(APP / "jobs" / "default.toml"), [APP / "sites" / f"{s}.toml" for s in SITES], seed=42
    )
    assert summary["mean_site_accuracy"] == pytest.approx(default, abs=0.005)

    metrics = json.loads((out / "metrics.json").read_text())
    last = len(metrics["rounds"])
    assert metrics["rounds"][-1]["aggregate"]["secagg_survivors"] == 4.0
    scale = 4096.0  # the job's fixed point for 4 sites (fedcore.secagg.job.encoder)
    needles = []
    for site in SITES:
        stored = ReplyStore(out / "sites" / site).load(metrics["job_id"], metrics["digest"], "train", last)
        assert stored is not None
        ints = np.asarray(stored.arrays[0], dtype=np.int64)
        words = (ints.view(np.uint64) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        weighted = ints[:-1] / scale
        needles += [words[:-1], weighted, weighted / stored.weight]  # as words, w x delta, delta
    arrays = [a for a in _arrays(held, set()) if a.size >= 14]
    assert arrays, "the spies saw nothing"
    for needle in needles:
        assert not any(_contains(a, needle) for a in arrays)
