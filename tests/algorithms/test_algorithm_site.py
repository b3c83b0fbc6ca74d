"""A client algorithm at a real site (its ClientApp handlers, ledger and state folder on disk): state
across rounds and restarts, replies replayed with their extras, the coordinator's extras checked
before any charge, extras as releases of the plan under DP, and what the site refuses in one line."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedcore.aggregators import Arrays
from fedcore.clients.runtime import SiteRuntime
from fedcore.config import JobRequest, Reader, parse_job
from fedcore.errors import ConfigError
from fedcore.flower.extras import extras_from_content, extras_to_records
from fedcore.flower.serde import arrays_from_record, arrays_to_record
from fedcore.privacy.mechanisms import MechanismPlan, PlanContext, register_mechanism
from tests.adversarial.coordinator import Coordinator, Refused, crafted, job, make_site

SCAFFOLD = 'algorithm.name="scaffold"'


def _train(
    c: Coordinator, request: JobRequest, server_round: int, model: Arrays, extras: Mapping[str, Arrays]
) -> tuple[Arrays, dict[str, Arrays]]:
    """A train message with the algorithm's extras; the reply's update and extras."""
    config = {"job": request.to_wire(), "server-round": server_round, "he-round": server_round - 1}
    content = RecordDict(
        {"config": ConfigRecord(config), "arrays": arrays_to_record(model), **extras_to_records(extras)}
    )
    reply = c.app(Message(content, dst_node_id=7, message_type=MessageType.TRAIN), c.context)
    if reply.has_error():
        raise Refused(str(reply.error.reason))
    return arrays_from_record(reply.content.array_records["arrays"]), extras_from_content(reply.content)


def _zeros(model: Arrays) -> dict[str, Arrays]:
    return {"control": tuple(np.zeros_like(a) for a in model)}


def test_state_survives_a_restart_and_a_replay_sends_the_same_extras(tmp_path: Path) -> None:
    request = job("fedavg", SCAFFOLD)
    runs = {}
    for name in ("steady", "restarted"):
        c = Coordinator(make_site(tmp_path / name), tmp_path / name / "s")
        c.admit(request)
        model = c.model(request)
        control = {"control": tuple(0.01 * np.ones_like(a) for a in model)}  # a server's c
        out = [_train(c, request, r, model, control) for r in (1, 2)]
        if name == "restarted":  # the node's process dies: a fresh runtime reads the state folder
            SiteRuntime._cache.clear()
            assert list((tmp_path / name / "s").rglob("algorithm/*/2.npz"))
        out.append(_train(c, request, 3, model, control))
        again = _train(c, request, 3, model, control)  # asked again: replayed, not recomputed
        assert all(np.array_equal(a, b) for a, b in zip(again[0], out[2][0], strict=True))
        assert all(
            np.array_equal(a, b)
            for a, b in zip(again[1]["control_delta"], out[2][1]["control_delta"], strict=True)
        )
        runs[name] = out
    for (d1, e1), (d2, e2) in zip(runs["steady"], runs["restarted"], strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(d1, d2, strict=True))
        assert all(
            np.array_equal(a, b) for a, b in zip(e1["control_delta"], e2["control_delta"], strict=True)
        )
    first, third = runs["steady"][0][0], runs["steady"][2][0]
    assert any(not np.allclose(a, b) for a, b in zip(first, third, strict=True))  # c_i moved the path


@pytest.mark.parametrize(
    ("extras", "reason"),
    [
        ({}, r"sent extras \[\], expected \['control'\]"),
        ({"control": (np.zeros(3),)}, "extra 'control' of shapes"),
        ({"control": None, "other": None}, r"expected \['control'\]"),
        ({"control": "nan"}, "extra 'control' holding NaN or inf"),
    ],
)
def test_the_coordinators_extras_are_checked_before_any_charge(
    tmp_path: Path, extras: dict, reason: str
) -> None:  # type: ignore[type-arg]
    c = Coordinator(make_site(tmp_path), tmp_path / "s")
    request = job("dp", SCAFFOLD)
    assert c.admit(request)["accepted"]
    model = c.model(request)
    sent = {
        k: (
            v
            if isinstance(v, tuple)
            else tuple(np.full_like(a, np.nan if v == "nan" else 0.0) for a in model)
        )
        for k, v in extras.items()
    }
    with pytest.raises(Refused, match=reason):
        _train(c, request, 1, model, sent)
    assert c.site.guard.ledger.job_charge(request.job_id) is None  # nothing released, nothing charged


def test_scaffold_under_dpsgd_releases_a_post_processing_of_its_update(tmp_path: Path) -> None:
    c = Coordinator(make_site(tmp_path), tmp_path / "s")
    plain, scaffold = job("dp", job_id="plain"), job("dp", SCAFFOLD, job_id="scaffold")
    plans = {r.job_id: c.admit(r)["plan"] for r in (plain, scaffold)}
    assert plans["scaffold"]["epsilon"] == pytest.approx(plans["plain"]["epsilon"])  # the same charge
    (extra,) = [r for r in plans["scaffold"]["releases"] if "control_delta" in r["what"]]
    assert extra["epsilon"] is None and "post-processing" in extra["protection"]
    model = c.model(scaffold)
    control = {"control": tuple(0.02 * np.ones_like(a) for a in model)}
    delta, got = _train(c, scaffold, 1, model, control)
    k_lr = scaffold.spec.local_steps * scaffold.spec.train.lr
    expected = [-cc - d / k_lr for cc, d in zip(control["control"], delta, strict=True)]  # of what was sent
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(got["control_delta"], expected, strict=True))


def test_fednova_steps_follow_the_public_size_and_dpsgd_is_planned_for_them(tmp_path: Path) -> None:
    c = Coordinator(make_site(tmp_path), tmp_path / "s")
    request = job("dp", 'algorithm.name="fednova"', "algorithm.local_epochs=1")
    assert c.admit(request)["accepted"]
    plan = c.site.plan(request)
    size = plan.size.value  # the DP-released size, not the true one
    assert plan.size.key and plan.local_steps == math.ceil(size / 4) != request.spec.local_steps
    (dpsgd,) = plan.mechanisms
    assert dpsgd.public["sample_rate"] == pytest.approx(4 / size)
    _, extras = _train(c, request, 1, c.model(request), {})
    assert extras["steps"][0].tolist() == [float(plan.local_steps)]


class _OldTrainerMechanism:
    """A plug-in whose trainer predates the algorithm API (no correction=, context=)."""

    name = "old_trainer"

    def parse(self, table: Reader) -> bool:
        table.done()
        return True

    def tighten(self, job: object, site: object, *, max_epsilon: float | None) -> object:
        return job

    def plan(self, settings: object, ctx: PlanContext) -> MechanismPlan:
        def trainer(model, x, y, cfg, steps, source):  # type: ignore[no-untyped-def]
            return {}

        return MechanismPlan(name=self.name, events=(), release="plain", trainer=trainer)


def test_a_trainer_without_the_correction_refuses_a_non_plain_algorithm(tmp_path: Path) -> None:
    register_mechanism(_OldTrainerMechanism(), force=True)
    c = Coordinator(make_site(tmp_path), tmp_path / "s")
    assert c.admit(job("fedavg", SCAFFOLD))["accepted"]  # without the mechanism: fine
    table = {**job("fedavg", SCAFFOLD).spec.table, "privacy": {"old_trainer": {}}}
    request = JobRequest("old", 4, parse_job(table, "test"))
    refused = c.admit(request)
    assert not refused["accepted"]
    assert (
        "mechanism 'old_trainer' trains locally with a trainer that takes no gradient correction"
        in refused["reason"]
    )
    assert "\n" not in refused["reason"]


@pytest.mark.parametrize(
    ("sets", "what"),
    [
        ((SCAFFOLD,), "server-to-site extras ['control'], site-to-server extras ['control_delta']"),
        (('algorithm.name="fednova"',), "site-to-server extras ['steps'], a server step"),
        (('algorithm.name="feddyn"',), "carries none of these: a server step beside the aggregator's;"),
    ],
)
@pytest.mark.parametrize(
    ("name", "mode", "section"), [("he", "HE", "he"), ("secagg", "secure aggregation", "secagg")]
)
def test_a_secure_sum_carries_no_extra_and_says_so_in_one_line(
    sets: tuple[str, ...], what: str, name: str, mode: str, section: str
) -> None:
    """Under HE or secure aggregation the coordinator sees only a sum: an extra sent beside it in the
    clear would bypass it, so the job is refused (at the coordinator and, parsing it, at every site)."""
    with pytest.raises(ConfigError, match=f"cannot run under {mode}") as err:
        job(name, *sets)
    text = str(err.value)
    assert what in text and f"{mode} carries none of these" in text
    assert f"turn [privacy.{section}] off or use algorithm 'plain'" in text
    assert job(name, 'algorithm.name="plain"').spec.algorithm.name == "plain"


def test_a_site_refuses_a_crafted_secagg_job_with_extras(tmp_path: Path) -> None:
    """A coordinator that skips its own load check: the site parses the request and refuses it."""
    table = job("secagg").spec.table | {"algorithm": {"name": "scaffold"}}
    c = Coordinator(make_site(tmp_path / "a"), tmp_path / "a" / "s")
    refused = c.admit(crafted(table))
    assert not refused["accepted"] and "cannot run under secure aggregation" in refused["reason"]


def test_algorithm_states_keep_the_two_latest_and_train_from_the_one_before(tmp_path: Path) -> None:
    from fedcore.site.algorithm_state import AlgorithmStates

    states = AlgorithmStates(tmp_path)
    for r in (1, 2, 4):
        states.save("job", r, {"control": (np.full(2, float(r)),)})
    kept = sorted(p.name for p in (tmp_path / "algorithm").rglob("*.npz"))
    assert kept == ["2.npz", "4.npz"]
    assert states.load("job", before=4)["control"][0].tolist() == [2.0, 2.0]  # type: ignore[index]
    assert states.load("job", before=5)["control"][0].tolist() == [4.0, 4.0]  # type: ignore[index]
    assert states.load("job", before=2) is None and states.load("other", before=9) is None
    AlgorithmStates(tmp_path / "plain").save("job", 1, {})
    assert not (tmp_path / "plain" / "algorithm").exists()  # a stateless algorithm writes nothing


class _ContextMechanism:
    """A plug-in trainer that takes the round's context (and so any algorithm's correction)."""

    name = "context_trainer"
    seen: ClassVar[list[object]] = []

    def parse(self, table: Reader) -> bool:
        table.done()
        return True

    def tighten(self, job: object, site: object, *, max_epsilon: float | None) -> object:
        return job

    def plan(self, settings: object, ctx: PlanContext) -> MechanismPlan:
        def trainer(model, x, y, cfg, steps, source, *, correction=None, context=None):  # type: ignore[no-untyped-def]
            _ContextMechanism.seen.append((context, correction is not None))
            return {}

        return MechanismPlan(name=self.name, events=(), release="plain", trainer=trainer)


def test_a_trainer_gets_the_site_the_round_and_the_jobs_seed(tmp_path: Path) -> None:
    register_mechanism(_ContextMechanism(), force=True)
    c = Coordinator(make_site(tmp_path), tmp_path / "s")
    table = {**job("fedavg", SCAFFOLD, "job.seed=11").spec.table, "privacy": {"context_trainer": {}}}
    request = JobRequest("ctx", 4, parse_job(table, "test"))
    assert c.admit(request)["accepted"]
    model = c.model(request)
    _train(c, request, 2, model, _zeros(model))
    context, corrected = _ContextMechanism.seen[-1]
    assert (context.site, context.server_round, context.job_seed, context.job_id) == (
        "cleveland",
        2,
        11,
        "ctx",
    )  # type: ignore[attr-defined]
    assert corrected  # SCAFFOLD's correction reached the plug-in trainer
