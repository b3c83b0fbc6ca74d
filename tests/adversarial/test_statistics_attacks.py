"""A coordinator asking a real site for statistics: classification, cells, caps, budget, HE sums.

As in ``test_attacks.py``, the site is real (site file, data, ledger, audit log, fedcore's ClientApp)
and only the coordinator is crafted.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from dp_accounting import dp_event

from fedcore.analytics.combine import combine
from fedcore.errors import KeyMismatchError
from fedcore.he import EncryptedUpdate, decrypt_integers, generate_keyset, save_secret, sum_encrypted
from fedcore.privacy.accounting import epsilon
from tests.adversarial.coordinator import Coordinator, Refused, make_site, query_claim, statistics

PROPORTION = {"name": "prevalence", "stat": "proportion", "of": "num > 0", "epsilon": 0.5}
COUNT = {"name": "positives", "stat": "count", "where": "num > 0", "epsilon": 0.7}


def _policy(extra: str = "", budget: float = 10.0) -> str:
    return f"[privacy]\nbudget_epsilon = {budget}\nbudget_delta = 1e-5\n{extra}\n"


def _site(tmp_path: Path, extra: str = "", *, budget: float = 10.0, name: str = "cleveland") -> Coordinator:
    return Coordinator(make_site(tmp_path / name, _policy(extra, budget), name=name), tmp_path / "state")


def _kinds(c: Coordinator) -> list[str]:
    return [r.kind for r in c.site.guard.audit.records()]


@pytest.mark.parametrize(
    "query",
    [
        {"stat": "mean", "column": "sex", "bounds": [0, 1], "epsilon": 0.5},
        {"stat": "count", "where": "sex == 1", "epsilon": 0.5},
        {"stat": "count", "by": "sex", "by_levels": [0, 1], "epsilon": 0.5},
    ],
    ids=["value", "filter", "group-by"],
)
def test_an_identifier_column_is_refused_with_a_clear_message(
    tmp_path: Path, query: dict[str, object]
) -> None:
    schema = 'sex = { type = "numeric", center = 0.0, scale = 1.0, tag = "quasi_identifier" } => sex = { type = "numeric", tag = "identifier" }'  # noqa: E501
    c = Coordinator(make_site(tmp_path, _policy(), schema=schema), tmp_path / "state")
    answer = c.admit_statistics(statistics(query))
    assert not answer["accepted"]
    assert "'sex' is an identifier column" in answer["reason"] and "never released" in answer["reason"]
    assert _kinds(c)[-1] == "refuse"
    assert c.site.guard.plans.plan("stats-1") is None  # nothing reserved
    with pytest.raises(Refused, match="is an identifier column"):
        c.answer(statistics(query))


def test_a_group_below_the_minimum_cell_size_is_suppressed_and_reported(tmp_path: Path) -> None:
    c = _site(tmp_path, "min_cell_size = 30")
    request = statistics(
        {"name": "by age", "stat": "count", "by": "age", "by_bins": [18, 40, 60, 100], "epsilon": 1.0}
    )
    assert c.admit_statistics(request)["accepted"]
    answers, _ = c.answer(request)
    groups = answers[0]["groups"]
    assert groups["age in [18, 40)"] == {
        "suppressed": True
    }  # Cleveland: 15 patients under 40 (noise scale 1)
    assert "releases" in groups["age in [40, 60)"] and "releases" in groups["age in [60, 100)"]
    result = combine(request.job.queries[0], {"cleveland": answers[0]})
    small = next(r for r in result["rows"] if r["group"] == "age in [18, 40)")
    assert small["value"] is None and small["suppressed_at"] == ["cleveland"]


def test_a_query_beyond_the_remaining_budget_is_refused_before_anything_is_released(tmp_path: Path) -> None:
    c = _site(tmp_path, budget=1.0)
    request = statistics(COUNT, {**COUNT, "name": "again"}, {**COUNT, "name": "thrice"})
    answer = c.admit_statistics(request)
    assert not answer["accepted"] and "budget" in answer["reason"]
    with pytest.raises(Refused):
        c.answer(request)
    ledger = c.site.guard.ledger
    assert ledger.summary().charges == () and ledger.remaining("heart_disease")[0] == pytest.approx(1.0)
    assert "release" not in _kinds(c)


def test_per_query_and_per_job_caps(tmp_path: Path) -> None:
    c = _site(tmp_path, "max_epsilon_per_query = 0.5\nmax_epsilon_per_job = 1.0")
    big = c.admit_statistics(statistics(COUNT))
    assert not big["accepted"] and "max_epsilon_per_query 0.5" in big["reason"]
    many = statistics(*({**PROPORTION, "name": f"q{i}"} for i in range(3)), job_id="stats-2")
    refused = c.admit_statistics(many)
    assert not refused["accepted"] and "max_epsilon_per_job 1" in refused["reason"]


def test_the_charge_is_the_plan_and_equals_dp_accounting(tmp_path: Path) -> None:
    c = _site(tmp_path)
    request = statistics(COUNT, PROPORTION)
    plan = c.admit_statistics(request)["plan"]
    c.answer(request)
    (charge,) = c.site.guard.ledger.summary().charges
    half = 0.25  # the proportion: half of 0.5 on its count, half on its sum
    expected = epsilon(
        [
            dp_event.DiscreteLaplaceDpEvent(0.7, 1),
            dp_event.DiscreteLaplaceDpEvent(half, 1),
            dp_event.DiscreteLaplaceDpEvent(half / 2**15, 2**15),  # the sum on its 2**15 lattice
        ],
        delta=1e-5,
    )
    assert charge.epsilon == pytest.approx(plan["epsilon"]) == pytest.approx(expected, abs=2e-3)
    assert charge.epsilon <= 0.7 + 0.5 + 1e-9


def test_each_batch_is_answered_once_and_only_as_admitted(tmp_path: Path) -> None:
    c = _site(tmp_path)
    request = statistics(COUNT)
    with pytest.raises(Refused):
        c.answer(request)  # never admitted
    assert c.admit_statistics(request)["accepted"]
    changed = statistics({**COUNT, "epsilon": 0.1})  # same job id, other settings
    with pytest.raises(Refused, match=r"digest|differs|changed"):
        c.answer(changed)
    c.answer(request)
    with pytest.raises(Refused, match="query round 1"):
        c.answer(request)  # a second answer would be a second noisy draw of the same value
    assert len(c.site.guard.ledger.summary().charges) == 1


def test_a_malformed_request_and_one_below_the_sites_floor_are_refused_and_audited(tmp_path: Path) -> None:
    c = _site(tmp_path, "min_sites = 3")
    bad = json.dumps({"job_id": "x", "num_sites": 4, "statistics": {"query": [{"stat": "count"}]}})
    answer = c.admit_statistics(bad)
    assert not answer["accepted"] and "epsilon" in answer["reason"]
    few = c.admit_statistics(statistics(COUNT, min_sites=2))
    assert not few["accepted"] and ">= 3 sites" in few["reason"]
    assert _kinds(c).count("refuse") == 2


def test_a_site_that_withholds_its_own_values_answers_only_under_he(tmp_path: Path) -> None:
    c = _site(tmp_path, 'site_statistics = "withhold"')
    answer = c.admit_statistics(statistics(COUNT))
    assert not answer["accepted"] and "only under HE" in answer["reason"]


def _he_sites(tmp_path: Path, share: str) -> tuple[list[Coordinator], object]:
    keyset = generate_keyset()
    sites = []
    for name in ("cleveland", "hungary"):
        c = _site(tmp_path, f'he_noise_share = "{share}"', name=name)
        save_secret(keyset, c.site.guard.paths.he_secret_key)
        sites.append(c)
    return sites, keyset


def _answered(sites: list[Coordinator], request: object) -> dict[str, bytes]:
    sealed = {}
    for c in sites:
        assert c.admit_statistics(request)["accepted"]  # type: ignore[arg-type]
        answers, cts = c.answer(request)  # type: ignore[arg-type]
        assert "groups" not in answers[0]  # no plaintext value
        sealed[c.site.name] = cts[0]
    return sealed


def test_he_sums_are_decrypted_once_and_only_with_enough_answers(tmp_path: Path) -> None:
    (cleveland, hungary), keyset = _he_sites(tmp_path, "split")
    request = statistics(COUNT, min_sites=2, he=True, num_sites=2)
    sealed = _answered([cleveland, hungary], request)
    both = ["cleveland", "hungary"]
    alone = sealed["hungary"]  # the coordinator forwards one site's answer as a "sum"
    lonely = query_claim(request, ["hungary"], [alone])
    with pytest.raises(Refused, match=r"holds 1 sites' answers; this site's answers go only into sums of 2"):
        hungary.confirm(request, lonely)
    with pytest.raises(Refused, match=r"holds 1 sites' answers.*opens only sums of 2 to 2 sites"):
        cleveland.decrypt(request, 0, alone, lonely, {})
    public = keyset.public()  # type: ignore[attr-defined]
    total = sum_encrypted(public, [EncryptedUpdate.from_bytes(b) for b in sealed.values()]).to_bytes()
    with pytest.raises(KeyMismatchError, match="coordinator cannot decrypt"):
        decrypt_integers(public, EncryptedUpdate.from_bytes(total))  # type: ignore[arg-type]
    claim = query_claim(request, both, [total])
    tags = {c.site.name: c.confirm(request, claim) for c in (cleveland, hungary)}
    with pytest.raises(Refused, match="no confirmation from hungary"):
        cleveland.decrypt(request, 0, total, claim, {"cleveland": tags["cleveland"]})
    out = cleveland.decrypt(request, 0, total, claim, tags)
    assert out["num_sites"] == 2 and out["contributors"] == both and "values" in out["groups"]["all"]
    with pytest.raises(Refused, match="query round 2"):
        cleveland.decrypt(request, 0, total, claim, tags)  # once per statistic
    with pytest.raises(Refused, match="not an encrypted sum"):
        cleveland.decrypt(request, 5, total, claim, tags)
    assert [r.kind for r in cleveland.site.guard.audit.records()][-3:] == ["release", "refuse", "refuse"]


@pytest.mark.parametrize("forgery", ["relabelled", "replayed"])
def test_a_forged_sum_is_not_released(tmp_path: Path, forgery: str) -> None:
    """The coordinator rewrites the plaintext header (one answer "of two sites"), or adds one site's
    answer to itself, and has both sites confirm it (they cannot see inside): the markers, which only
    key holders can compute, do not add up."""
    (cleveland, hungary), keyset = _he_sites(tmp_path, "split")
    request = statistics(COUNT, min_sites=2, he=True, num_sites=2)
    sealed = _answered([cleveland, hungary], request)
    one = EncryptedUpdate.from_bytes(sealed["hungary"])
    public = keyset.public()  # type: ignore[attr-defined]
    forged = (
        dataclasses.replace(one, num_sites=2)
        if forgery == "relabelled"
        else sum_encrypted(public, [one, one])
    ).to_bytes()
    claim = query_claim(request, ["cleveland", "hungary"], [forged])
    tags = {c.site.name: c.confirm(request, claim) for c in (cleveland, hungary)}
    with pytest.raises(Refused, match="markers do not add up"):
        cleveland.decrypt(request, 0, forged, claim, tags)
    assert cleveland.site.guard.audit.records()[-1].kind == "refuse"
