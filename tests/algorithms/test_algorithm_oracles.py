"""SCAFFOLD, FedNova and FedDyn through the in-process engine (real site runtimes, their state on
disk, the job's aggregator) against naive float64 loops of each paper's update, on the four hospitals'
data with a logistic regression. Tolerance: 1e-4 (the engine trains in float32 and sends float32)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from fedcore.clients.runtime import round_seed
from fedcore.config import JobSpec, load_job
from fedcore.harness.loop import run_inprocess
from fedcore.models import build_model, get_arrays
from tests.adversarial.coordinator import MEDICAL, make_site

HOSPITALS = ("cleveland", "hungary", "switzerland", "va")
Vec = NDArray[np.float64]


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> list[Path]:
    folder = tmp_path_factory.mktemp("sites")
    return [make_site(folder, name=n) for n in HOSPITALS]


def _job(*sets: str) -> JobSpec:
    base = ["job.rounds=3", "train.local_steps=4", "train.lr=0.1", "train.batch_size=1000"]
    return load_job(MEDICAL / "jobs" / "fedavg.toml", [*base, *sets])


def _run(spec: JobSpec, sites: list[Path]) -> tuple[Vec, list[tuple[Vec, Vec]], Vec]:
    """The engine's final model (flat), each site's (x, y), and the initial model (flat)."""
    g, runtimes = run_inprocess(spec, sites, seed=spec.seed)
    data = [(r.data.x_train.astype(np.float64), r.data.y_train.astype(np.float64)) for r in runtimes]
    init = get_arrays(build_model(spec.model.as_table(), data[0][0].shape[1], seed=spec.seed))
    return np.concatenate([a.ravel() for a in g]), data, np.concatenate([a.ravel() for a in init])


def _grad(theta: Vec, x: Vec, y: Vec) -> Vec:
    """Mean BCE-with-logits gradient of a logistic regression, weights then bias (state_dict order)."""
    w, b = theta[:-1], theta[-1]
    r = (1 / (1 + np.exp(-(x @ w + b))) - y) / len(y)
    return np.concatenate([x.T @ r, [r.sum()]])


def test_scaffold_matches_algorithm_1_option_2(sites: list[Path]) -> None:
    """Karimireddy et al. 2020, Alg. 1: y <- y - lr (g(y) - c_i + c), c_i+ = c_i - c + (x - y)/(K lr),
    x <- x + mean dy (lr_g = 1; trmean with f=0 is the unweighted mean), c <- c + sum dc / N."""
    spec = _job('algorithm.name="scaffold"', 'aggregator.name="trmean"', "aggregator.f=0")
    got, data, x = _run(spec, sites)
    k, lr, n = 4, 0.1, len(data)
    c, ci = np.zeros_like(x), [np.zeros_like(x) for _ in data]
    for _ in range(spec.rounds):
        dys, dcs = [], []
        for i, (xs, ys) in enumerate(data):
            y = x.copy()
            for _ in range(k):
                y -= lr * (_grad(y, xs, ys) - ci[i] + c)
            new = ci[i] - c + (x - y) / (k * lr)
            dys.append(y - x)
            dcs.append(new - ci[i])
            ci[i] = new
        x = x + np.mean(dys, axis=0)
        c = c + np.sum(dcs, axis=0) / n
    assert np.abs(got - x).max() < 1e-4
    assert np.abs(got - _plain(sites)).max() > 1e-3  # the control variates changed the path


def _plain(sites: list[Path]) -> Vec:
    spec = _job('aggregator.name="trmean"', "aggregator.f=0")
    return _run(spec, sites)[0]


def test_feddyn_matches_algorithm_1(sites: list[Path]) -> None:
    """Acar et al. 2021, Alg. 1: local steps on L_k(t) - <g_k, t> + alpha/2 ||t - theta||^2;
    g_k <- g_k - alpha (t_k - theta); h <- h - alpha/m sum (t_k - theta); theta <- mean t_k - h/alpha."""
    alpha = 0.05
    spec = _job(
        'algorithm.name="feddyn"', f"algorithm.alpha={alpha}", 'aggregator.name="trmean"', "aggregator.f=0"
    )
    got, data, theta = _run(spec, sites)
    m = len(data)
    h, gk = np.zeros_like(theta), [np.zeros_like(theta) for _ in data]
    for _ in range(spec.rounds):
        locals_ = []
        for i, (xs, ys) in enumerate(data):
            t = theta.copy()
            for _ in range(4):
                t -= 0.1 * (_grad(t, xs, ys) - gk[i] + alpha * (t - theta))
            gk[i] = gk[i] - alpha * (t - theta)
            locals_.append(t)
        h = h - alpha / m * np.sum([t - theta for t in locals_], axis=0)
        theta = np.mean(locals_, axis=0) - h / alpha
    assert np.abs(got - theta).max() < 1e-4


def _batches(n: int, size: int, seed: int) -> Iterator[torch.Tensor]:
    """fedcore's documented shuffling of plain local steps: epochs of a seeded permutation."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield from torch.split(torch.randperm(n, generator=gen), size)


def test_fednova_matches_its_normalised_update(sites: list[Path]) -> None:
    """Wang et al. 2020, Eq. 6-7 with SGD (a_i all ones): site i runs tau_i = ceil(n_i / B) steps (one
    epoch); x <- x + tau_eff sum_i p_i d_i / tau_i, tau_eff = sum_i p_i tau_i, p_i = n_i / n."""
    spec = _job('algorithm.name="fednova"', "algorithm.local_epochs=1", "train.batch_size=64")
    got, data, x = _run(spec, sites)
    counts = np.array([len(ys) for _, ys in data], dtype=np.float64)
    taus = np.ceil(counts / 64)
    assert len(set(taus)) > 1  # the sites run different numbers of steps
    p = counts / counts.sum()
    for r in range(1, spec.rounds + 1):
        ds = []
        for (xs, ys), tau, name in zip(data, taus, HOSPITALS, strict=True):
            y = x.copy()
            for idx, _ in zip(
                _batches(len(ys), 64, round_seed(spec.seed, r, name)), range(int(tau)), strict=False
            ):
                rows = idx.numpy()
                y -= 0.1 * _grad(y, xs[rows], ys[rows])
            ds.append(y - x)
        tau_eff = float(p @ taus)
        x = x + tau_eff * np.sum([pi * d / t for pi, d, t in zip(p, ds, taus, strict=True)], axis=0)
    assert np.abs(got - x).max() < 1e-4
    fedavg = _run(_job("train.batch_size=64", f"train.local_steps={int(taus.max())}"), sites)[0]
    assert np.abs(got - fedavg).max() > 1e-3
