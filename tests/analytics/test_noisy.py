"""Statistics under secure aggregation with distributed DP, at one real site: the noise each site
adds (statistically: unbiased, the stated std), the sensitivity against a naive oracle (one unit
removed from the real table), the plan's choice between exact and noisy, and the batch file's
strictness."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fedcore.analytics.exact import exact_answer, exact_sums
from fedcore.analytics.noisy import plan_secure, secure_answer, sensitivity, site_noise, summed_std
from fedcore.analytics.released import released_histogram
from fedcore.config import load_site
from fedcore.config.site import SiteConfig
from fedcore.data import load_table
from fedcore.errors import ConfigError, PolicyError
from fedcore.privacy.rng import Source
from tests.adversarial.coordinator import make_site, statistics
from tests.analytics.test_units import AGE_ID

SECAGG = '\n[secagg]\nmembers = {{ a = "{k}", b = "{k}", c = "{k}" }}\nthreshold = 3\n{extra}'.format
KEY = "ab" * 32
FINE = {
    "name": "chol",
    "stat": "histogram",
    "column": "chol",
    "bins": {"start": 100, "stop": 600, "width": 0.05},
}
COUNT = {"name": "diseased", "stat": "count", "where": "num > 0"}
HIST = {"name": "chest pain", "stat": "histogram", "column": "cp"}
SK = {"secagg": True, "noise": "skellam", "noise_multiplier": 1.0}
PROP = {"name": "prevalence", "stat": "proportion", "of": "num > 0", "by": "sex", "by_levels": [0, 1]}


def _site(
    tmp_path: Path, *, extra: str = "", unit: bool = False, budget: float = 20.0, caps: str = ""
) -> SiteConfig:
    policy = f"[privacy]\nbudget_epsilon = {budget}\nbudget_delta = 1e-5\nmin_sites = 3\n{caps}"
    policy += 'unit_column = "age"\n' if unit else ""
    path = make_site(tmp_path, policy + SECAGG(k=KEY, extra=extra), schema=AGE_ID if unit else "")
    return load_site(path)


def _noisy(*queries: dict[str, object], noise: str = "ddgauss", z: float = 2.0, n: int = 4) -> object:
    return statistics(*queries, secagg=True, min_sites=3, num_sites=n, noise=noise, noise_multiplier=z)


@pytest.mark.parametrize("noise", ["ddgauss", "skellam"])
def test_the_summed_noise_is_unbiased_with_the_stated_std(tmp_path: Path, noise: str) -> None:
    """Four sites' answers (the real site code, seeded sources) summed: the sum less the exact counts
    has mean 0 and std ``summed_std`` (10,000 cells; tolerances 5 standard errors)."""
    site = _site(tmp_path)
    frame = load_table(site)
    request = _noisy(FINE, noise=noise, z=3.0)
    exact = exact_answer(request, site, frame)  # type: ignore[arg-type]
    total = sum(
        secure_answer(request, site, frame, source=Source(secure=False, seed=s))  # type: ignore[arg-type]
        for s in range(4)
    )
    noise_sum = (total - 4 * exact).astype(float)
    std = summed_std(request, 4)  # type: ignore[arg-type]
    assert std == pytest.approx(3.0)  # z x L2, L2 = 1 for one histogram
    n = noise_sum.size
    assert n == 10_000
    assert abs(noise_sum.mean()) < 5 * std / math.sqrt(n)
    assert noise_sum.std() == pytest.approx(std, rel=5 * math.sqrt(2 / n))
    assert not np.array_equal(total, 4 * exact)


def test_one_unit_moves_the_vector_by_at_most_the_sensitivity(tmp_path: Path) -> None:
    """Naive oracle: remove each row of the real table in turn; the exact vector moves by at most the
    stated L2 / L1 (one row per unit at a site without a unit column), and some row reaches them."""
    site = _site(tmp_path)
    frame = load_table(site)
    request = _noisy(COUNT, HIST, PROP)
    l2, l1 = sensitivity(request.job, site)  # type: ignore[attr-defined]
    assert (l2, l1) == pytest.approx((math.sqrt(1 + 1 + 2), 1 + 1 + 2))
    full = exact_answer(request, site, frame)  # type: ignore[arg-type]
    moves = [full - exact_answer(request, site, frame.drop(frame.index[i])) for i in range(len(frame))]  # type: ignore[arg-type]
    assert max(float(np.linalg.norm(d)) for d in moves) == pytest.approx(l2)
    assert max(int(np.abs(d).sum()) for d in moves) == l1


def test_a_unit_site_counts_at_most_rows_per_unit_of_each_unit(tmp_path: Path) -> None:
    """At a site with a unit column the answer keeps <= rows_per_unit rows per unit, and the site's
    sensitivity is the batch's (public) one for that m."""
    site = _site(tmp_path, unit=True)
    frame = load_table(site)
    request = _noisy({**COUNT, "rows_per_unit": 2}, z=1e-3)  # noise std ~0.001: the counts show
    l2, l1 = sensitivity(request.job, site)  # type: ignore[attr-defined]
    assert (l2, l1) == (2.0, 2.0) == sensitivity(request.job)  # type: ignore[attr-defined]
    ints = secure_answer(request, site, frame, source=Source(secure=False, seed=1))  # type: ignore[arg-type]
    sick = frame[frame["num"] > 0]
    assert int(ints[0]) == int(sick.groupby("age").size().clip(upper=2).sum()) < len(sick)


def test_noise_needs_no_exact_opt_in_and_exact_sums_still_do(tmp_path: Path) -> None:
    site = _site(tmp_path)  # no exact_statistics = true
    plan = plan_secure(_noisy(COUNT), site)  # type: ignore[arg-type]
    assert plan.secagg and plan.noise == "ddgauss" and plan.epsilon > 0 and len(plan.events) == 1
    assert plan.summary()["secagg"] == "ddgauss" and plan.summary()["trust"] == "own"
    with pytest.raises(PolicyError, match="exact_statistics = true"):
        plan_secure(statistics(COUNT, secagg=True, min_sites=3), site)
    opted = _site(tmp_path / "opted", extra="exact_statistics = true\n")
    assert plan_secure(statistics(COUNT, secagg=True, min_sites=3), opted).epsilon == 0.0


def test_the_site_noise_sums_to_the_batch_std() -> None:
    request = _noisy(COUNT, HIST, z=2.0, n=5)
    dg = site_noise(request)  # type: ignore[arg-type]
    sk = site_noise(_noisy(COUNT, HIST, noise="skellam", z=2.0, n=5))  # type: ignore[arg-type]
    assert dg.scale == pytest.approx(2.0 * math.sqrt(2) / math.sqrt(5))  # each site's std
    assert sk.scale == pytest.approx(dg.scale**2)  # Skellam: the variance
    assert summed_std(request, 5) == pytest.approx(2.0 * math.sqrt(2))  # type: ignore[arg-type]
    assert summed_std(request, 3) == pytest.approx(2.0 * math.sqrt(2) * math.sqrt(3 / 5))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("job", "query", "message"),
    [
        ({"noise": "ddgauss", "noise_multiplier": 1.0}, COUNT, "set secagg = true"),
        ({"secagg": True, "noise": "ddgauss"}, COUNT, "needs noise_multiplier > 0"),
        ({"secagg": True, "noise": "ddgauss", "noise_multiplier": 0}, COUNT, "needs noise_multiplier > 0"),
        ({"secagg": True, "noise_multiplier": 1.0}, COUNT, "set noise, or remove it"),
        ({"secagg": True, "noise": "laplace", "noise_multiplier": 1.0}, COUNT, "noise"),
        (SK, {**COUNT, "epsilon": 1.0}, "remove epsilon"),
        (SK, {"name": "m", "stat": "mean", "column": "age"}, "are of"),
        ({"secagg": True}, {**COUNT, "rows_per_unit": 2}, "an exact sum counts every row"),
    ],
    ids=["no-secagg", "no-multiplier", "zero", "no-noise", "unknown", "epsilon", "mean", "exact-units"],
)  # fmt: skip
def test_a_noisy_batch_is_strict(job: dict[str, object], query: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        statistics(query, **job)


def test_noisy_sums_are_read_back_as_noisy_with_their_std() -> None:
    request = _noisy(PROP)
    layout = [(["sex = 0", "sex = 1"], 2)]
    total = np.array([0, 1, 40, 9])  # a noisy count can be 0 (or negative: below any min_cell_size)
    (out,) = exact_sums(request.job.queries, layout, total, min_cell_size=0, noise_std=3.5)  # type: ignore[attr-defined]
    assert out["exact"] is False and out["noise_std"] == 3.5
    assert out["groups"]["sex = 0"]["proportion"] is None
    assert out["groups"]["sex = 1"]["proportion"] == pytest.approx(9 / 40)
    negative = exact_sums(
        request.job.queries, layout, np.array([-2, 1, 40, 9]), min_cell_size=0, noise_std=3.5
    )  # type: ignore[attr-defined]
    assert negative[0]["groups"]["sex = 0"] == {"suppressed": True}


def test_a_noisy_histogram_is_read_back_for_an_apps_features(tmp_path: Path) -> None:
    request = _noisy(HIST)
    results = exact_sums(
        request.job.queries, [(["all"], 4)], np.array([3, -1, 5, 2]), min_cell_size=0, noise_std=2.0
    )  # type: ignore[attr-defined]
    path = tmp_path / "statistics.json"
    path.write_text(json.dumps({"results": results}))
    assert released_histogram(path, "chest pain").tolist() == [3.0, -1.0, 5.0, 2.0]


def test_a_statistic_over_the_sites_per_query_cap_is_refused(tmp_path: Path) -> None:
    site = _site(tmp_path, caps="max_epsilon_per_query = 0.5\n")
    alone = plan_secure(_noisy(COUNT, z=20.0), site)  # type: ignore[arg-type]
    assert alone.epsilon < 0.5
    with pytest.raises(PolicyError, match=r"diseased: epsilon .* > max_epsilon_per_query 0.5"):
        plan_secure(_noisy(COUNT, z=2.0), site)  # type: ignore[arg-type]
