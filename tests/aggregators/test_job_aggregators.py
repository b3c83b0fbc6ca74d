"""What a job's [aggregator] builds and refuses: the wrappers by name, robust rules too small for
min_sites, rules without apply_mean under HE and client-level DP; and the coordinator's norm screen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcore.aggregators import (
    AdaptiveClipping,
    ClientUpdate,
    FedAvg,
    Krum,
    NearestNeighborMixing,
    TrimmedMean,
)
from fedcore.aggregators.screen import screen_norms
from fedcore.aggregators.wrappers import build_aggregator
from fedcore.config import JobSpec, apply_overrides, load_job, parse_job, read_toml
from fedcore.errors import ConfigError

MEDICAL = Path(__file__).resolve().parents[2] / "examples" / "medical"


def _job(name: str, *sets: str, aggregator: dict[str, object] | None = None) -> JobSpec:
    """A medical job with ``sets``; ``aggregator`` replaces its whole [aggregator] table."""
    if aggregator is None:
        return load_job(MEDICAL / "jobs" / f"{name}.toml", list(sets))
    table = {**read_toml(MEDICAL / "jobs" / f"{name}.toml"), "aggregator": aggregator}
    return parse_job(apply_overrides(table, sets), f"{name}.toml")


def test_wrappers_are_selectable_by_name_and_table() -> None:
    agg = build_aggregator(
        "trmean", {"f": 1, "pre": "nnm", "clipping": {"name": "adaptive", "initial_norm": 0.5}}
    )
    assert isinstance(agg, AdaptiveClipping) and agg.norm == 0.5
    assert isinstance(agg.inner, NearestNeighborMixing) and agg.inner.f == 1
    assert isinstance(agg.inner.inner, TrimmedMean)
    assert build_aggregator("krum", {"f": 2, "pre": {"name": "nnm"}}).f == 2  # type: ignore[attr-defined]
    spec = _job("fedavg", 'aggregator.clipping="adaptive"')
    assert spec.aggregator.options == {"clipping": "adaptive"}
    with pytest.raises(ConfigError, match=r"\[aggregator\] pre must be 'nnm'"):
        build_aggregator("fedavg", {"pre": "bucketing"})


def test_a_robust_rule_too_small_for_min_sites_is_refused_before_round_1() -> None:
    with pytest.raises(ConfigError) as err:
        _job("fedavg", 'aggregator.name="krum"')
    assert (
        "aggregator 'krum' with f=1 needs at least 5 updates per round (its min_updates()) but [job] "
        "min_sites = 4 lets a round be aggregated with 4: set [job] min_sites (and sites_per_round) >= 5, "
        "or lower the rule's f"
    ) in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(
        ConfigError, match="with f=2 needs at least 5 updates"
    ):  # the wrapper's minimum counts
        _job(
            "fedavg",
            'aggregator.name="trmean"',
            "aggregator.f=1",
            "job.min_sites=3",
            'aggregator.pre={name="nnm", f=2}',
        )
    assert _job("fedavg", 'aggregator.name="trmean"', "aggregator.f=1").aggregator.name == "trmean"


def test_rules_without_apply_mean_are_refused_under_he_and_client_dp() -> None:
    with pytest.raises(
        ConfigError, match="aggregator 'trmean' cannot run under HE: the sites open only the sum"
    ):
        _job("he", aggregator={"name": "trmean", "f": 1})
    with pytest.raises(ConfigError, match="cannot be client-level DP's inner aggregator"):
        _job("client_dp", 'aggregator.name="median"')
    with pytest.raises(ConfigError, match="cannot run under HE"):
        _job("he", aggregator={"name": "fedavg", "clipping": "adaptive"})
    with pytest.raises(ConfigError, match="'fedyogi' needs single updates; under secure aggregation"):
        _job("secagg", 'aggregator.clipping="adaptive"')  # a wrapper has no mean step either
    with pytest.raises(ConfigError, match="'fedyogi' needs single updates"):
        _job("secagg", 'aggregator.pre="nnm"')


def _u(site: str, norm: float, dim: int = 4) -> ClientUpdate:
    return ClientUpdate(delta=(np.full(dim, norm / np.sqrt(dim)),), num_examples=10, site=site)


def test_the_screen_rejects_above_the_absolute_bound_and_clips_above_the_ratio() -> None:
    ups = [_u("a", 1.0), _u("b", 2.0), _u("c", 3.0), _u("d", 50.0), _u("e", 1000.0)]
    out = screen_norms(ups, max_norm=100.0, max_ratio=2.0)
    assert set(out.rejected) == {"e"} and "L2 norm 1000 > bound 100" in out.rejected["e"]
    median = 2.5  # of the four kept
    assert out.clipped == pytest.approx({"d": 2 * median / 50.0})  # c (3) is within 2 x 2.5
    norms = {u.site: float(np.linalg.norm(u.delta[0])) for u in out.updates}
    assert norms == pytest.approx({"a": 1.0, "b": 2.0, "c": 3.0, "d": 5.0})
    same = screen_norms(ups, max_norm=None, max_ratio=None)
    assert same.updates == ups and not same.rejected and not same.clipped


def test_the_ratio_is_refused_under_he_and_secure_aggregation() -> None:
    with pytest.raises(ConfigError, match="max_norm_ratio: needs the updates' norms"):
        _job("he", "job.max_norm_ratio=3")
    with pytest.raises(ConfigError, match="max_norm_ratio: needs the updates' norms"):
        _job("secagg", "job.max_norm_ratio=3")
    assert _job("fedavg", "job.max_norm_ratio=3").max_norm_ratio == 3.0
    with pytest.raises(ConfigError, match="max_norm_ratio: must be > 1"):
        _job("fedavg", "job.max_norm_ratio=1")


def test_fedavg_with_krum_at_five_banks_is_accepted() -> None:
    assert isinstance(build_aggregator("krum", {}), Krum)
    assert isinstance(build_aggregator("fedavg", {}), FedAvg)
