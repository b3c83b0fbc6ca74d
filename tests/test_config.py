"""Job overrides and site privacy policies parse as documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcore.clients.policy import SitePolicy
from fedcore.config import apply_overrides, load_job, load_site
from fedcore.errors import ConfigError

APP = Path(__file__).resolve().parents[1] / "examples" / "medical"


def test_nested_overrides_reach_privacy_sections_without_touching_the_input() -> None:
    raw = {"job": {"rounds": 3}, "privacy": {"dpsgd": {"epsilon": 1.0}}}
    out = apply_overrides(raw, ["privacy.dpsgd.epsilon=0.5", "privacy.he.enabled=true", "job.rounds=7"])
    assert out["privacy"] == {"dpsgd": {"epsilon": 0.5}, "he": {"enabled": True}}
    assert out["job"]["rounds"] == 7
    assert raw["privacy"]["dpsgd"]["epsilon"] == 1.0


def test_bad_overrides_are_explained() -> None:
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        apply_overrides({}, ["rounds5"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"job": {"rounds": 3}}, ["job.rounds.x=1"])


def test_job_override_of_dp_epsilon_is_applied() -> None:
    job = load_job(APP / "jobs" / "dp.toml", ["privacy.dpsgd.epsilon=3"])
    assert job.raw["privacy"]["dpsgd"]["epsilon"] == 3


def test_site_policy_reads_budget_and_paths() -> None:
    policy = SitePolicy.from_site(load_site(APP / "sites" / "cleveland.toml"))
    assert policy.budget_epsilon == 10.0 and policy.max_epsilon_per_job == 8.0
    assert policy.ledger is None and not policy.require_he
