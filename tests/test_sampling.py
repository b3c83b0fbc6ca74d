"""Sites sampled per round: the job key and its checks, the coordinator's sampling, and a site's ledger
charging only the rounds it answers (no amplification by sampling claimed)."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting.dp_event import ComposedDpEvent, SelfComposedDpEvent

from fedcore.cli import main
from fedcore.config import load_job
from fedcore.errors import ConfigError
from fedcore.flower.strategy import FedcoreStrategy, RoundLog
from fedcore.privacy.accounting import event_from_json
from fedcore.site.ledger import PrivacyLedger
from tests.adversarial.coordinator import DEFAULT_POLICY, Coordinator, job, make_site

APP = Path(__file__).resolve().parents[1] / "examples" / "medical"


# --- the job key ----------------------------------------------------------------------------------


def test_sites_per_round_defaults_to_every_site_and_is_parsed() -> None:
    assert load_job(APP / "jobs" / "fedavg.toml").sites_per_round is None
    spec = load_job(APP / "jobs" / "fedavg.toml", ["job.sites_per_round=4"])
    assert spec.sites_per_round == 4 and spec.table["job"]["sites_per_round"] == 4  # it travels


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["job.sites_per_round=3"], "sites_per_round: must be >= min_sites (4), got 3"),
        (["job.sites_per_round=0"], "sites_per_round: must be >= 1, got 0"),
        (["job.site_per_round=5"], "did you mean 'sites_per_round'?"),
    ],
)
def test_a_bad_sites_per_round_is_refused_at_load(sets: list[str], expected: str) -> None:
    with pytest.raises(
        ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")
    ):
        load_job(APP / "jobs" / "fedavg.toml", sets)


def test_more_sites_per_round_than_the_app_has_fails_before_flower_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t0 = time.perf_counter()
    args = [
        "run",
        str(APP),
        "--job",
        "fedavg",
        "--set",
        "job.sites_per_round=5",
        "--quiet",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 2
    assert time.perf_counter() - t0 < 5.0
    err = capsys.readouterr().err
    assert "sites_per_round = 5 but the app lists 4 sites" in err and "Traceback" not in err


# --- the coordinator's sampling -------------------------------------------------------------------


def _strategy(k: int | None, nodes: int = 20, seed: int = 0) -> FedcoreStrategy:
    return FedcoreStrategy(
        None, node_ids=list(range(100, 100 + nodes)), min_sites=1, sites_per_round=k, rng=random.Random(seed)
    )


def test_each_round_samples_k_distinct_admitted_sites_uniformly() -> None:
    s = _strategy(5)
    counts: Counter[int] = Counter()
    draws = 4000
    for _ in range(draws):
        picked = s.sample()
        assert len(picked) == len(set(picked)) == 5 and picked == sorted(picked)
        assert set(picked) <= set(s.node_ids)
        counts.update(picked)
    expected = draws * 5 / 20  # each of 20 sites in 1/4 of the rounds
    assert set(counts) == set(s.node_ids)
    assert all(abs(c - expected) < 5 * (expected * 0.75) ** 0.5 for c in counts.values()), counts  # 5 sigma


def test_sampling_is_reproducible_from_the_seed_and_all_sites_without_k() -> None:
    a, b = _strategy(3, seed=1), _strategy(3, seed=1)
    rounds = [a.sample() for _ in range(10)]
    assert rounds == [b.sample() for _ in range(10)]  # who is sampled is no secret: the job's seed
    assert len({tuple(r) for r in rounds}) > 1  # a new draw each round
    assert _strategy(None).sample() == list(range(100, 120))
    assert _strategy(50).sample() == list(range(100, 120))  # k above the admitted: every site


def test_the_round_log_names_the_sampled_sites() -> None:
    s = _strategy(2, nodes=4)
    s.site_names = {100: "a", 101: "b", 102: "c", 103: "d"}
    s.history.append(RoundLog(round=1))
    from flwr.app import ArrayRecord, ConfigRecord, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1  # as the ServerApp's process

    msgs = s._messages(
        RecordDict({"arrays": ArrayRecord(), "config": ConfigRecord({})}), MessageType.TRAIN, [101, 103]
    )
    assert [m.metadata.dst_node_id for m in msgs] == [101, 103]
    assert s.history[-1].sampled_train == ["b", "d"] and s.history[-1].sampled_evaluate == []
    assert s.asked == {101, 103}


# --- a site charges the rounds it answers ---------------------------------------------------------


def _ledger(c: Coordinator) -> PrivacyLedger:
    return PrivacyLedger(c.state_dir / "cleveland" / "ledger.db", site="cleveland")


def _pld(events: list[object], delta: float = 1e-5) -> float:
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    for e in events:
        acc.compose(e)  # type: ignore[arg-type]
    return float(acc.get_epsilon(delta))


def test_a_sampled_site_is_charged_only_the_rounds_it_answers(tmp_path: Path) -> None:
    c = Coordinator(make_site(tmp_path, DEFAULT_POLICY), tmp_path / "state")
    request = job("dp", "job.rounds=4", "job.sites_per_round=4", job_id="sampled")
    plan = c.admit(request)["plan"]
    assert plan["epsilon"] > 0
    model = c.model(request)
    c.train(request, 1, model)  # sampled in rounds 1 and 3 only (of 4)
    c.train(request, 3, model)
    ledger = _ledger(c)
    charges = ledger.summary().charges
    assert [ch.job_id for ch in charges] == ["sampled", "sampled"]  # one charge per answered round
    first, second = (event_from_json(ch.event_json) for ch in charges)
    site = c.site
    planned = site.plan(request)
    (round_event,) = planned.per_answer["train"]
    assert planned.upfront == () and planned.per_answer["evaluate"] == ()  # evaluations withheld
    assert round_event == SelfComposedDpEvent(planned.mechanisms[0].events[0].event, 5)  # local_steps
    # the first answer also pays the noisy training-set size; each answer pays one round of DP-SGD
    answer = ComposedDpEvent([round_event])
    assert (first, second) == (ComposedDpEvent([planned.size.event, answer]), answer)
    golden = _pld([planned.size.event, round_event, round_event])
    spent, _ = ledger.spent("heart_disease")
    assert spent == pytest.approx(golden, rel=5e-3)
    assert spent < plan["epsilon"] - 0.05  # what all four rounds would have cost
    job_eps, _ = ledger.job_charge("sampled") or (0.0, 0.0)
    assert job_eps == pytest.approx(golden, rel=5e-3)


def test_unanswered_rounds_hold_budget_until_the_job_ends(tmp_path: Path) -> None:
    # PLD: the first job's answered round and the size 0.90, its whole plan 1.04; with a second job
    # (epsilon 1) the total is 1.20 while the first job's round 2 is held, 1.13 once it is not
    policy = DEFAULT_POLICY.replace("20.0", "1.16")
    c = Coordinator(make_site(tmp_path, policy), tmp_path / "state")
    first = job("dp", "job.rounds=2", "job.sites_per_round=4", job_id="first")
    second = job("dp", "job.rounds=2", "job.sites_per_round=4", job_id="second")
    assert c.admit(first)["accepted"]
    c.train(first, 1, c.model(first))  # one of its two rounds answered: the other is still held
    answer = c.admit(second)
    assert not answer["accepted"] and "refused, nothing was run" in answer["reason"]
    assert c.cancel("first") == "cancelled"  # the coordinator ended the job: its round 2 is never given
    with pytest.raises(Exception, match="was cancelled"):
        c.train(first, 2, c.model(first))
    assert c.admit(second)["accepted"]
    assert len(_ledger(c).summary().charges) == 1  # the first job's one answered round, kept


def test_a_round_beyond_the_plan_is_refused_and_the_budget_is_never_exceeded(tmp_path: Path) -> None:
    c = Coordinator(make_site(tmp_path, DEFAULT_POLICY), tmp_path / "state")
    request = job("dp", "job.rounds=2", "job.sites_per_round=4", job_id="bounded")
    whole = c.admit(request)["plan"]["epsilon"]
    model = c.model(request)
    c.train(request, 2, model)
    c.train(request, 1, model)
    with pytest.raises(Exception, match=r"rounds 1\.\.2 only"):
        c.train(request, 3, model)
    spent, _ = _ledger(c).spent("heart_disease")
    assert spent == pytest.approx(whole, rel=5e-3)  # every round answered: the plan's whole cost, no more
