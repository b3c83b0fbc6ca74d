"""Customer-level DP at a site: the site names the customer column, refuses what it cannot honour."""

from __future__ import annotations

from pathlib import Path

import dp_accounting
import numpy as np
import pytest

from fedcore.config import load_site
from fedcore.errors import ConfigError
from tests.adversarial.coordinator import DEFAULT_POLICY, Coordinator, job, make_site

# stand-in customers: the hospital's patients grouped by age (an identifier here, never a feature)
AGE_ID = (
    'age = { type = "numeric", center = 55.0, scale = 10.0, tag = "quasi_identifier", bounds = [18, 100] } '
    '=> age = { type = "numeric", tag = "identifier" }'
)
CUSTOMER = 'privacy.dpsgd.unit="customer"'


def _site(tmp_path: Path, privacy: str) -> Coordinator:
    return Coordinator(make_site(tmp_path, privacy, schema=AGE_ID), tmp_path / "s")


def test_customer_job_is_planned_over_the_sites_customers(tmp_path: Path) -> None:
    policy = DEFAULT_POLICY + 'unit_column = "age"\ndataset_size = "public"\n'
    c = _site(tmp_path, policy)
    answer = c.admit(job("dp", "privacy.dpsgd.epsilon=1.0", CUSTOMER))
    assert answer["accepted"], answer
    plan = c.site.plan(job("dp", "privacy.dpsgd.epsilon=1.0", CUSTOMER))
    customers = len(set(c.site.data.units_train.tolist()))  # type: ignore[union-attr]
    assert customers < len(c.site.data.y_train)
    (mechanism,) = plan.mechanisms
    assert mechanism.public["sample_rate"] == 4 / customers  # batch_size customers of U, not of rows
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    event = dp_accounting.PoissonSampledDpEvent(
        4 / customers, dp_accounting.GaussianDpEvent(mechanism.public["noise_multiplier"])
    )
    acc.compose(event, 3 * 5)
    assert plan.epsilon == pytest.approx(acc.get_epsilon(1e-5), rel=0.01)
    summary = answer["plan"]
    assert summary["unit"] == "customer"
    updates = next(r for r in summary["releases"] if r["what"] == "model updates")
    assert updates["unit"] == "customer" and "per customer" in updates["protection"]
    start = c.model(job("dp"))
    arrays, metrics = c.train(job("dp", "privacy.dpsgd.epsilon=1.0", CUSTOMER), 1, start)
    assert all(np.isfinite(a).all() for a in arrays) and any((a != 0).any() for a in arrays)
    one_round = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    one_round.compose(event, 5)  # the answer charges its own round (5 steps), not the plan's three
    assert metrics["sample_rate"] == 4 / customers
    assert metrics["epsilon"] == pytest.approx(one_round.get_epsilon(1e-5), rel=0.01)
    assert metrics["epsilon"] < plan.epsilon


def test_example_level_plan_states_its_unit(tmp_path: Path) -> None:
    c = Coordinator(make_site(tmp_path), tmp_path / "s")
    plan = c.admit(job("dp"))["plan"]
    assert plan["unit"] == "example"
    assert {r["unit"] for r in plan["releases"] if r["epsilon"] is not None} == {"example"}


def test_customer_job_at_a_site_without_a_customer_column_is_refused(tmp_path: Path) -> None:
    c = Coordinator(make_site(tmp_path), tmp_path / "s")
    answer = c.admit(job("dp", CUSTOMER))
    assert not answer["accepted"]
    assert "names no customer column" in answer["reason"] and "unit_column" in answer["reason"]
    assert c.site.guard.audit.records()[-1].kind == "refuse"


def test_site_requiring_customer_unit_refuses_an_example_level_job(tmp_path: Path) -> None:
    policy = DEFAULT_POLICY + 'unit_column = "age"\n[privacy.dpsgd]\nepsilon = 2.0\nunit = "customer"\n'
    c = _site(tmp_path, policy)
    answer = c.admit(job("dp"))
    assert not answer["accepted"]
    assert "requires customer-level DP-SGD" in answer["reason"]
    last = c.site.guard.audit.records()[-1]
    assert last.kind == "refuse" and "requires customer-level" in last.released
    assert c.admit(job("dp", CUSTOMER, job_id="job-2"))["accepted"]
    # a job without DP gets the site's own customer-level minimum
    plan = c.admit(job("default", job_id="job-3"))["plan"]
    assert plan["unit"] == "customer"


@pytest.mark.parametrize(
    ("privacy", "schema", "needle"),
    [
        ('unit_column = "agee"\n', AGE_ID, "(did you mean 'age'?)"),
        ('unit_column = "chol"\n', "", 'tag it "identifier"'),
        ('[privacy.dpsgd]\nepsilon = 1.0\nunit = "customer"\n', "", "needs [privacy] unit_column"),
        ('[privacy.dpsgd]\nepsilon = 1.0\nunit = "user"\n', "", "must be one of 'example', 'customer'"),
    ],
)
def test_site_file_problems_are_one_clean_line(
    tmp_path: Path, privacy: str, schema: str, needle: str
) -> None:
    path = make_site(tmp_path, DEFAULT_POLICY + privacy, schema=schema)
    with pytest.raises(ConfigError, match="invalid site file") as err:
        load_site(path)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_job_dp_keys_are_strict() -> None:
    with pytest.raises(ConfigError, match="did you mean 'max_rows_per_customer'"):
        job("dp", CUSTOMER, "privacy.dpsgd.max_row_per_customer=4")
    with pytest.raises(ConfigError, match='applies only with unit = "customer"'):
        job("dp", "privacy.dpsgd.max_rows_per_customer=4")
