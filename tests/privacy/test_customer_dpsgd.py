"""Customer-level DP-SGD: accounting against dp_accounting, the per-customer clip bound, the noise."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import pld, rdp

from fedcore.config import TrainConfig
from fedcore.errors import PrivacyError
from fedcore.privacy import accounting
from fedcore.privacy import customer_dpsgd as C
from fedcore.privacy import dpsgd as D
from fedcore.privacy.mechanisms import PlanContext
from fedcore.privacy.mechanisms.dpsgd import DpSgd, DpSgdMechanism
from fedcore.privacy.rng import PrivacyWarning, seeded_source

CFG = TrainConfig(lr=1.0, batch_size=5)


def _source(seed: int = 0):  # type: ignore[no-untyped-def]
    with pytest.warns(PrivacyWarning):
        return seeded_source(seed)


def _data(rows_per_customer: list[int], dim: int = 3, seed: int = 0):  # type: ignore[no-untyped-def]
    gen = np.random.default_rng(seed)
    units = np.repeat(np.arange(len(rows_per_customer)), rows_per_customer)
    x = gen.normal(size=(len(units), dim)).astype(np.float32) * 5
    y = (gen.random(len(units)) < 0.5).astype(np.float32)
    return x, y, units


@pytest.mark.parametrize(("name", "acc"), [("pld", pld.PLDAccountant), ("rdp", rdp.RdpAccountant)])
def test_customer_epsilon_equals_dp_accounting_over_sampled_customers(name: str, acc: type) -> None:
    """The plan's events are the Poisson-subsampled Gaussian over customers, composed ``steps`` times."""
    units = np.repeat(np.arange(400), 7)  # 2800 rows of 400 customers: q must be over customers
    ctx = PlanContext(len(np.unique(units)), 10, 3, 20, 4, False, units)
    plan = DpSgdMechanism().plan(DpSgd(2.0, 1e-5, 1.0, "customer", 4), ctx)
    z, q = plan.public["noise_multiplier"], plan.public["sample_rate"]
    assert q == 10 / 400 and plan.unit == "customer" and "per customer" in plan.release
    golden = acc() if name == "rdp" else acc(value_discretization_interval=1e-4)
    golden.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), 60)
    ours = accounting.epsilon(list(plan.events), delta=1e-5, accountant=name)  # type: ignore[arg-type]
    assert ours == pytest.approx(golden.get_epsilon(1e-5), rel=0.01)
    if name == "pld":  # calibrated to spend just under the target
        assert golden.get_epsilon(1e-5) == pytest.approx(2.0, rel=0.01)


def _naive(
    model: torch.nn.Module, x: np.ndarray, y: np.ndarray, units: np.ndarray, clip: float
) -> torch.Tensor:
    """Oracle: per customer, autograd on each row, mean, clip, sum."""
    total = None
    for u in np.unique(units):
        grads = []
        for i in np.flatnonzero(units == u):
            model.zero_grad()
            out = model(torch.from_numpy(x[i : i + 1]))
            torch.nn.functional.binary_cross_entropy_with_logits(
                out.squeeze(-1), torch.from_numpy(y[i : i + 1])
            ).backward()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]).double())
        g = torch.stack(grads).mean(0)
        g = g * min(1.0, clip / (float(g.norm()) + 1e-6))
        total = g if total is None else total + g
    assert total is not None
    return total


def test_customer_clipped_sum_matches_naive_loop() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    x, y, units = _data([1, 5, 2, 9])
    owner = torch.from_numpy(units)
    got = C.customer_clipped_sum(model, torch.from_numpy(x), torch.from_numpy(y), owner, 4, CFG, 0.3)
    assert torch.allclose(got.double(), _naive(model, x, y, units, 0.3), atol=1e-5)


def test_one_customer_with_many_rows_moves_the_noiseless_sum_by_at_most_clip() -> None:
    """Add a customer with 300 large rows: the noiseless clipped sum moves by <= C (not by 300 rows)."""
    torch.manual_seed(1)
    model = torch.nn.Linear(3, 1)
    x, y, units = _data([3, 4, 300], seed=2)
    xt, yt, owner = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(units)
    clip = 0.5
    without = units < 2
    s_with = C.customer_clipped_sum(model, xt, yt, owner, 3, CFG, clip)
    s_without = C.customer_clipped_sum(model, xt[without], yt[without], owner[without], 2, CFG, clip)
    assert float((s_with - s_without).norm()) <= clip + 1e-5
    # the bound is not vacuous: the heavy customer's rows, clipped one by one (per example), move it more
    heavy = ~without
    rows = C.customer_clipped_sum(
        model, xt[heavy], yt[heavy], torch.arange(int(heavy.sum())), int(heavy.sum()), CFG, clip
    )
    assert float(rows.norm()) > 5 * clip


def _plan(units: np.ndarray, batch: int, z: float, steps: int = 1) -> D.DpSgdPlan:
    u = int(units.max()) + 1
    return D.DpSgdPlan(D.DpSgdConfig(1.0, 1e-5, 0.5), z, batch / u, batch, u, 1, steps)


def test_a_step_with_every_customer_and_no_noise_is_the_clipped_mean() -> None:
    """q = 1 and z = 0: one SGD step (lr 1) moves the weights by minus the clipped sum over U."""
    torch.manual_seed(3)
    model = torch.nn.Linear(3, 1)
    x, y, units = _data([2, 6, 1, 4, 3])
    expected = -_naive(model, x, y, units, 0.5) / 5
    before = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
    C.train_steps_customer_dp(
        model, x, y, units, CFG, plan=_plan(units, 5, 0.0), max_rows=100, steps=1, source=_source()
    )
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.allclose((after - before).double(), expected, atol=1e-5)


def test_rows_per_customer_are_capped_by_a_random_subset() -> None:
    units = np.repeat(np.arange(3), [10, 1, 4])
    rows_of = C.CustomerRows(units)
    source = _source(5)
    seen: set[int] = set()
    for _ in range(30):
        rows, owner = rows_of.sample(torch.tensor([0, 1, 2]), 3, source)
        assert np.bincount(units[rows.numpy()], minlength=3).tolist() == [3, 1, 3]
        assert (units[rows.numpy()] == owner.numpy()).all()
        seen |= set(rows[owner == 0].tolist())
    assert seen == set(range(10))  # every row of the heavy customer gets drawn at some step


def test_noise_std_per_step_is_z_clip_over_expected_customers() -> None:
    """Zero inputs and labels 1/2 give zero weight gradients: the weights move by the noise alone."""
    units = np.repeat(np.arange(50), 3)
    x, y = np.zeros((150, 400), np.float32), np.full(150, 0.5, np.float32)
    model = torch.nn.Linear(400, 1)
    torch.nn.init.zeros_(model.bias)  # logit 0, label 1/2: no gradient at all
    before = model.weight.detach().clone()
    plan = _plan(units, 5, 1.3, steps=100)
    C.train_steps_customer_dp(model, x, y, units, CFG, plan=plan, max_rows=2, steps=100, source=_source(9))
    per_step = (model.weight.detach() - before).flatten() / math.sqrt(100)
    # 400 weights: relative standard error of the std ~ 3.5%; allow ~5 SE
    assert float(per_step.std()) == pytest.approx(1.3 * 0.5 / 5, rel=0.18)


def test_refuses_a_plan_it_does_not_match() -> None:
    x, y, units = _data([2, 2])
    with pytest.raises(PrivacyError, match="batch_size"):
        C.train_steps_customer_dp(
            torch.nn.Linear(3, 1), x, y, units, TrainConfig(lr=1.0, batch_size=3),
            plan=_plan(units, 2, 1.0), max_rows=4, steps=1,
        )  # fmt: skip
    with pytest.raises(PrivacyError, match="one code per training row"):
        C.train_steps_customer_dp(
            torch.nn.Linear(3, 1), x, y, units[:-1], TrainConfig(lr=1.0, batch_size=2),
            plan=_plan(units, 2, 1.0), max_rows=4, steps=1,
        )  # fmt: skip
