"""Statistics under a privacy unit (a customer with many rows): bounded rows, calibrated noise, the
charge per unit; and features computed across units refused under DP-SGD of that unit."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dp_accounting import dp_event

from fedcore.analytics.dp import dp_count, dp_histogram, dp_quantiles, dp_sum
from fedcore.analytics.query import parse_queries
from fedcore.analytics.released import released_histogram
from fedcore.analytics.site import bound_units
from fedcore.errors import ConfigError
from fedcore.privacy.accounting import epsilon
from fedcore.privacy.rng import PrivacyWarning, Source, seeded_source
from tests.adversarial.coordinator import DEFAULT_POLICY, Coordinator, job, make_site, statistics

# stand-in customers: the hospital's patients grouped by age (an identifier here, never a feature)
AGE_ID = (
    'age = { type = "numeric", center = 55.0, scale = 10.0, tag = "quasi_identifier", bounds = [18, 100] } '
    '=> age = { type = "numeric", tag = "identifier" }'
)


@pytest.mark.parametrize("m", [1, 3, 8])
def test_unit_rows_scale_the_noise_and_keep_epsilon_per_unit(m: int) -> None:
    releases = [
        dp_count(10, epsilon=0.5, unit_rows=m),
        dp_histogram([0, 1, 1], categories=[0, 1, 2], epsilon=0.5, unit_rows=m),
        dp_sum([1.0, 2.0], bounds=(0.0, 4.0), epsilon=0.5, resolution=1.0, unit_rows=m),
        dp_quantiles([1.0, 2.0], bounds=(0.0, 4.0), quantiles=[0.5], epsilon=0.5, bins=16, unit_rows=m),
    ]
    for r in releases[:2]:
        assert r.scale == pytest.approx(m / 0.5)
        assert r.event == dp_event.DiscreteLaplaceDpEvent(noise_parameter=0.5 / m, sensitivity=m)
    assert releases[2].scale == pytest.approx(4 * m / 0.5)  # sensitivity 4 per row, m rows per unit
    for r in releases:  # OpenDP's map at d_in = m and dp_accounting agree: epsilon 0.5 per unit
        assert r.epsilon == pytest.approx(0.5, rel=1e-6)
        assert epsilon([r.event], delta=1e-9) == pytest.approx(0.5, rel=5e-3)  # PLD discretisation
    with pytest.raises(Exception, match="unit_rows"):
        dp_count(3, epsilon=1.0, unit_rows=0)


def _source(seed: int) -> Source:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        return seeded_source(seed)


def test_bound_units_keeps_at_most_m_random_rows_of_each_unit() -> None:
    rows = pd.DataFrame({"who": [1] * 50 + [2] * 3 + [None] * 4, "x": range(57)})
    kept = [bound_units(rows, "who", 2, _source(s)) for s in range(20)]
    for k in kept:
        assert k["who"].value_counts().max() <= 2 and k["who"].notna().all()
        assert set(k["who"]) == {1, 2}
    assert len({tuple(sorted(k["x"])) for k in kept}) > 1  # a random subset, not the first rows


def test_a_unit_site_answers_per_customer_and_charges_per_customer(tmp_path: Path) -> None:
    policy = DEFAULT_POLICY + 'unit_column = "age"\n'
    c = Coordinator(make_site(tmp_path, policy, schema=AGE_ID), tmp_path / "s")
    q = {"name": "ill", "stat": "count", "where": "num > 0", "epsilon": 0.5, "rows_per_unit": 3}
    request = statistics(q)
    admitted = c.admit_statistics(request)
    assert admitted["accepted"] and admitted["plan"]["unit"] == "customer"
    (answer,), _ = c.answer(request)
    (release,) = answer["groups"]["all"]["releases"]
    assert release["scale"] == pytest.approx(3 / 0.5) and release["sensitivity"] == 3
    ill = c.site.statistics.table[c.site.statistics.table["num"] > 0]
    bounded = int(np.minimum(ill["age"].value_counts(), 3).sum())  # what the count is of
    assert bounded < len(ill) and abs(release["values"][0] - bounded) < 60  # 99.99% of DL(6) noise
    spent = c.site.guard.ledger.spent(c.site.site.dataset)[0]
    assert spent == pytest.approx(0.5, rel=1e-3)


def test_rows_per_unit_and_bins_ranges_are_read_strictly() -> None:
    base = {"name": "h", "stat": "histogram", "column": "x", "epsilon": 1.0}
    job_ = parse_queries({"query": [{**base, "bins": {"start": 0, "stop": 6, "width": 2}}]}, "t")
    assert job_.queries[0].bins == (0.0, 2.0, 4.0, 6.0)
    for bad, msg in (
        ({"bins": {"start": 0, "stop": 5, "width": 2}}, "whole number"),
        ({"bins": {"start": 0, "stop": 5, "widht": 1}}, "widht"),
        ({"rows_per_unit": 0}, "rows_per_unit"),
    ):
        with pytest.raises(ConfigError, match=msg):
            parse_queries({"query": [{**base, "bins": [0, 1, 2], **bad}]}, "t")


# --- features that depend on other rows ----------------------------------------------------------

CHOL_UNIT = 'chol = { type = "numeric", => chol = { type = "numeric", depends_on = "unit",'
CHOL_OTHERS = CHOL_UNIT.replace('"unit"', '"other_units"')


def test_example_level_dp_refuses_features_that_depend_on_other_rows(tmp_path: Path) -> None:
    c = Coordinator(make_site(tmp_path, schema=CHOL_UNIT), tmp_path / "s")
    refused = c.admit(job("dp"))
    assert not refused["accepted"]
    assert "example-level DP protects one example only if" in refused["reason"]
    assert refused["reason"].endswith("or use customer-level DP") and ": chol;" in refused["reason"]
    assert c.site.guard.audit.records()[-1].kind == "refuse"
    assert c.admit(job("default", job_id="job-2"))["accepted"]  # no DP: nothing to protect per row


def test_customer_level_dp_refuses_only_features_of_other_customers(tmp_path: Path) -> None:
    policy = DEFAULT_POLICY + 'unit_column = "age"\ndataset_size = "public"\n'
    customer = 'privacy.dpsgd.unit="customer"'
    within = Coordinator(make_site(tmp_path / "a", policy, schema=AGE_ID + "\n" + CHOL_UNIT), tmp_path / "s")
    assert within.admit(job("dp", customer))["accepted"]
    across = Coordinator(
        make_site(tmp_path / "b", policy, schema=AGE_ID + "\n" + CHOL_OTHERS), tmp_path / "t"
    )
    refused = across.admit(job("dp", customer))
    assert not refused["accepted"] and "customer-level DP protects one customer only if" in refused["reason"]


def test_released_histogram_reads_bins_in_order_and_refuses_what_was_not_released(tmp_path: Path) -> None:
    rows = [{"group": "all", "item": f"[{i}, {i + 1})", "value": v} for i, v in enumerate([3.0, -1.0, 7.0])]
    body = {
        "results": [
            {
                "name": "cells",
                "stat": "histogram",
                "rows": [*rows, {"group": "all", "item": "other", "value": 2.0}],
            }
        ]
    }
    path = tmp_path / "statistics.json"
    path.write_text(json.dumps(body))
    assert released_histogram(path, "cells").tolist() == [3.0, -1.0, 7.0]
    with pytest.raises(ConfigError, match="no released statistic named 'frauds'"):
        released_histogram(path, "frauds")
    body["results"][0]["rows"][1]["value"] = None
    path.write_text(json.dumps(body))
    with pytest.raises(ConfigError, match="was not released"):
        released_histogram(path, "cells")
