"""Noisy statistics under secure aggregation (distributed DP), through four real hospitals and a
crafted coordinator: what each site charges (against dp_accounting and the ported reference
formulas), whose noise it counts, its budget, and the coordinator's attempts to lower the noise or
to get a second answer. The sites are real (site files, identities, data, ledgers, audit logs,
fedcore's ClientApp); the coordinator plays the protocol with ``fedcore.secagg.server``."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dp_accounting import dp_event, rdp

from fedcore.analytics.noisy import summed_std
from fedcore.analytics.query import QueryRequest
from fedcore.secagg.dp import DistributedNoise, Mechanism, Trust, site_epsilon
from fedcore.secagg.keyfile import write_identity
from fedcore.secagg.messages import MaskedInput
from fedcore.secagg.policy import planned_min_honest
from tests.adversarial.coordinator import Coordinator, Refused, make_site, statistics
from tests.adversarial.secagg_federation import NAMES
from tests.adversarial.secagg_federation import policy as secagg_policy
from tests.adversarial.test_secagg_statistics import COUNT, HIST, StatsFederation

DELTA = 1e-5
Z = 2.0


def _request(z: float = Z, *, job_id: str = "noisy-1", noise: str = "ddgauss") -> QueryRequest:
    return statistics(COUNT, HIST, job_id=job_id, secagg=True, min_sites=3, num_sites=4, noise=noise,
                      noise_multiplier=z)  # fmt: skip


def _federation(
    tmp_path: Path, *, trust: str = "own", budget: float = 20.0, cap: str = ""
) -> StatsFederation:
    keys, members = {}, {}
    for name in NAMES:
        keys[name], members[name] = write_identity(name, tmp_path / "keys" / name)
    files = {}
    for n in NAMES:
        text = secagg_policy(members, keys[n], extra=f'trust = "{trust}"\n')  # no exact_statistics
        text = text.replace("budget_epsilon = 20.0", f"budget_epsilon = {budget}\n{cap}")
        files[n] = make_site(tmp_path / n, text, name=n)
    return StatsFederation({n: Coordinator(f, tmp_path / "state") for n, f in files.items()}, _request())


def _admit_all(fed: StatsFederation) -> None:
    for name, c in fed.sites.items():
        admission = c.admit_statistics(fed.request)
        assert admission["accepted"], admission
        fed.plans[name] = admission["plan"]


def _spent(c: Coordinator, budget: float = 20.0) -> float:
    return budget - c.site.guard.budget_report()["remaining_epsilon"]


def _golden_own(z: float) -> float:
    """dp_accounting's epsilon of one site's own discrete Gaussian: for one site (no sum of discrete
    Gaussians) its RDP is the Gaussian's, a (L2 / sigma)^2 / 2 (Canonne, Kamath & Steinke 2020)."""
    l2 = math.sqrt(2)  # a count and a histogram: one patient moves each by at most 1
    sigma = z * l2 / math.sqrt(4)
    return float(rdp.RdpAccountant().compose(dp_event.GaussianDpEvent(sigma / l2)).get_epsilon(DELTA))


def test_each_site_charges_its_own_noise_as_dp_accounting_once_at_its_answer(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    _admit_all(fed)
    golden = _golden_own(Z)
    reference = site_epsilon(
        DistributedNoise(Mechanism.DISCRETE_GAUSSIAN, Z * math.sqrt(2) / 2), l2_sensitivity=math.sqrt(2),
        l1_sensitivity=2.0, dim=5, trust=Trust.OWN, rounds=1, delta=DELTA,
    )  # fmt: skip  # the ported reference formulas, integer orders
    for name in NAMES:
        assert fed.plans[name]["epsilon"] == pytest.approx(golden, rel=1e-9)
        assert fed.plans[name]["epsilon"] == pytest.approx(reference, rel=0.05)
        assert fed.plans[name]["secagg"] == "ddgauss" and fed.plans[name]["trust"] == "own"
        assert _spent(fed.sites[name]) == pytest.approx(0.0, abs=1e-12)  # reserved, not yet charged
    fed.masked_answers()
    total = fed.open_sum()
    for name in NAMES:  # charged at the one answer, by the site's own ledger
        assert _spent(fed.sites[name]) == pytest.approx(golden, rel=1e-6)
    tables = [fed.sites[s].site.statistics.table for s in NAMES]
    exact = [sum(int((t["num"] > 0).sum()) for t in tables)]
    exact += [sum(int((t["cp"] == level).sum()) for t in tables) for level in (1, 2, 3, 4)]
    err = np.asarray(total) - np.asarray(exact)
    std = summed_std(fed.request, 4)
    assert std == pytest.approx(Z * math.sqrt(2))
    assert np.all(np.abs(err) < 8 * std) and np.any(err != 0)  # noisy, within the stated std


def test_trusting_the_threshold_charges_for_the_honest_sites_noise(tmp_path: Path) -> None:
    own, thr = _federation(tmp_path / "own"), _federation(tmp_path / "thr", trust="threshold")
    got = []
    for fed in (own, thr):
        admission = fed.sites["va"].admit_statistics(fed.request)
        assert admission["accepted"], admission
        got.append(admission["plan"]["epsilon"])
    cfg = thr.sites["va"].site.site.secagg
    assert cfg is not None
    honest = planned_min_honest(
        threshold=cfg.threshold, max_corrupt_fraction=cfg.max_corrupt_fraction, num_sites=4
    )
    assert honest == 2  # 4 sites, gamma 1/3: quorum 3, one corrupt
    noise = DistributedNoise(Mechanism.DISCRETE_GAUSSIAN, Z * math.sqrt(2) / 2)
    reference = site_epsilon(
        noise, l2_sensitivity=math.sqrt(2), l1_sensitivity=2.0, dim=5, trust=Trust.THRESHOLD,
        min_honest=honest, rounds=1, delta=DELTA,
    )  # fmt: skip
    assert got[1] == pytest.approx(reference, rel=0.05) and got[1] < got[0]
    # two sites' discrete Gaussians: within the reference's tau of one of variance 2 sigma^2
    assert got[1] == pytest.approx(_golden_own(Z * math.sqrt(2)), rel=1e-6)


def test_a_site_whose_budget_is_spent_refuses_the_next_noisy_batch(tmp_path: Path) -> None:
    golden = _golden_own(Z)
    two = float(rdp.RdpAccountant().compose(dp_event.GaussianDpEvent(1.0), 2).get_epsilon(DELTA))
    budget = (golden + two) / 2  # room for one batch, not two (RDP composes two below 2 x golden)
    fed = _federation(tmp_path, budget=budget)
    _admit_all(fed)
    fed.masked_answers()
    fed.open_sum()
    c = fed.sites["cleveland"]
    assert _spent(c, budget) == pytest.approx(golden, rel=1e-6)
    second = c.admit_statistics(_request(job_id="noisy-2"))
    assert not second["accepted"] and "budget" in second["reason"]
    assert _spent(c, budget) == pytest.approx(golden, rel=1e-6)  # nothing more charged


def test_a_lowered_noise_is_charged_at_its_cost_or_refused(tmp_path: Path) -> None:
    fed = _federation(tmp_path, cap="max_epsilon_per_job = 12.0")
    low = _request(0.5, job_id="low")  # a quarter of the noise: 16 times the zCDP cost
    admission = fed.sites["hungary"].admit_statistics(low)
    assert not admission["accepted"] and "> max_epsilon_per_job 12" in admission["reason"]
    lowered = _request(1.0, job_id="lowered")
    admission = fed.sites["hungary"].admit_statistics(lowered)
    assert admission["accepted"] and admission["plan"]["epsilon"] == pytest.approx(_golden_own(1.0), rel=1e-9)
    assert _golden_own(1.0) > 2 * _golden_own(Z)


def test_a_crafted_zero_noise_is_refused(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    good = _request()
    table: dict[str, Any] = {**good.job.table, "job": {**good.job.table["job"], "noise_multiplier": 0}}
    crafted = QueryRequest("zero", 4, replace(good.job, table=table))
    admission = fed.sites["va"].admit_statistics(crafted)
    assert not admission["accepted"] and "needs noise_multiplier > 0" in admission["reason"]
    silent = {**good.job.table, "job": {k: v for k, v in good.job.table["job"].items() if k != "noise"}}
    admission = fed.sites["va"].admit_statistics(QueryRequest("silent", 4, replace(good.job, table=silent)))
    assert not admission["accepted"] and "set noise, or remove it" in admission["reason"]  # noise dropped
    kinds = [r.kind for r in fed.sites["va"].site.guard.audit.records()]
    assert kinds.count("refuse") >= 2


def test_a_re_asked_batch_is_refused_and_charged_once(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    _admit_all(fed)
    fed.masked_answers()
    golden = _golden_own(Z)
    with pytest.raises(Refused, match="answered only masked"):  # never in the clear
        fed.sites["cleveland"].answer(fed.request)
    # a second attempt (fresh keys) of the same batch: a second noisy copy would halve the noise
    again = StatsFederation(fed.sites, fed.request, plans=fed.plans)
    for d in again.exchange_keys(attempt="fedcba9876543210"):
        with pytest.raises(Refused, match="answers were all given"):
            again.ask(d.receiver, "secagg-answer", d, MaskedInput)
    for name in NAMES:
        assert _spent(fed.sites[name]) == pytest.approx(golden, rel=1e-6)  # charged once
