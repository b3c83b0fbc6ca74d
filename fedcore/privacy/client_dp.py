"""Client-level DP (one site's whole update is protected) as an aggregator wrapper.

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models",
Sec. 2 and Alg. 1, fixed-denominator estimator): every site's delta is clipped to L2 norm ``C``,
the clipped deltas are *summed with uniform weights*, Gaussian noise N(0, (z C)^2) is added to the
sum, and the sum is divided by a fixed denominator (``expected_clients``, default the number of
updates of the round: the coordinator's sample size, fixed by the job and public). The noised
mean goes to the inner aggregator's ``apply_mean`` (FedAvg, FedAdam ...), so a server optimizer
only post-processes a DP release. ``num_examples`` is ignored: data-dependent weights would
change the sensitivity, so under DP every site weighs 1 (under HE, sites send weight 1).

Each round's ``AggregateResult.dp_events`` holds that round's release as a ``dp_accounting``
event. The wrapper is a research tool for in-process experiments: fedcore sites refuse jobs with
central client-level DP (they cannot check that the coordinator adds the noise) and charge
distributed client-level DP for their own share only (``fedcore.privacy.mechanisms.client_dp``).
No sampling amplification is claimed: sites cannot verify how the coordinator sampled.

Adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive Clipping",
Sec. 2-3, Alg. 1): ``C <- C exp(-eta (b - gamma))`` with ``b`` the noised fraction of unclipped
updates, counted as sum(b_i - 1/2) (sensitivity 1/2) with noise N(0, sigma_b^2). The delta noise
is raised to ``z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2`` so both releases together are exactly a
Gaussian mechanism with the requested ``z``; the round's event is the composition
``[Gaussian(z_delta), Gaussian(2 sigma_b)]``, which accounts to ``Gaussian(z)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
from dp_accounting import dp_event
from numpy.typing import NDArray

from fedcore.aggregators.base import AggregateResult, Arrays, ClientUpdate, MeanAggregator
from fedcore.errors import AggregationError, ConfigError, UpdateError
from fedcore.privacy.noise import clip_to_norm, gaussian_noise, l2_norm
from fedcore.privacy.rng import Source

__all__ = ["ClientLevelDP", "ClippingMode", "DPMode", "clip_and_add_noise_share"]

DPMode = Literal["central", "distributed"]
ClippingMode = Literal["fixed", "adaptive"]
_Release = tuple[Arrays, dp_event.DpEvent, dict[str, float]]
_HEADROOM_SIGMAS = 10.0  # ||N(0, s^2 I_d)|| <= s (sqrt(d) + t) w.p. >= 1 - exp(-t^2 / 2)


def clip_and_add_noise_share(
    delta: Sequence[NDArray[np.float64]],
    *,
    clipping_norm: float,
    noise_multiplier: float,
    num_sites: int,
    source: Source,
) -> Arrays:
    """Site side of distributed DP: clip to ``C`` and add a share N(0, z^2 C^2 / num_sites).

    The shares of ``num_sites`` sites sum to N(0, z^2 C^2): the full central noise, while no
    party ever sees an un-noised update (with HE, not even the noised one).
    """
    if num_sites < 1:
        raise ConfigError(f"num_sites must be >= 1, got {num_sites}")
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ConfigError(f"noise_multiplier must be finite and > 0, got {noise_multiplier}")
    std = noise_multiplier * clipping_norm / math.sqrt(num_sites)
    clipped = clip_to_norm(delta, clipping_norm=clipping_norm)
    return tuple(c + gaussian_noise(c.shape, std=std, source=source) for c in clipped)


class ClientLevelDP:
    """Wrap a mean-based aggregator with client-level DP; same protocol in and out.

    Parameters
    ----------
    inner
        An aggregator with ``apply_mean`` (the step must depend on the updates only via the mean).
    clipping_norm
        ``C``: L2 bound on each site's delta (the initial value with adaptive clipping).
    noise_multiplier
        ``z``: the noise std on the sum is ``z * C`` (the total, including adaptive clipping).
    mode
        ``"central"``: this wrapper (at the coordinator) clips and adds the noise.
        ``"distributed"``: sites ran ``clip_and_add_noise_share``; this wrapper only checks norms.
    source
        The noise source (``fedcore.privacy.rng.secure_source()`` in production).

    clipping
        ``"fixed"`` or ``"adaptive"`` (central mode only).
    num_sites
        Distributed mode: the number of sites that each add one noise share.
    target_quantile, clip_lr, count_noise_std
        Adaptive clipping's ``gamma``, ``eta`` and ``sigma_b`` (default ``0.05 * clients``).
    expected_clients
        The fixed denominator; default the number of updates in each round.
    """

    def __init__(
        self,
        inner: MeanAggregator,
        *,
        clipping_norm: float,
        noise_multiplier: float,
        mode: DPMode,
        source: Source,
        clipping: ClippingMode = "fixed",
        num_sites: int | None = None,
        target_quantile: float = 0.5,
        clip_lr: float = 0.2,
        count_noise_std: float | None = None,
        expected_clients: int | None = None,
    ) -> None:
        problems = _problems(
            inner, clipping_norm, noise_multiplier, mode, clipping, num_sites,
            target_quantile, clip_lr, count_noise_std, expected_clients,
        )  # fmt: skip
        if problems:
            raise ConfigError("ClientLevelDP: " + "; ".join(problems))
        self.inner, self.mode, self.clipping, self.source = inner, mode, clipping, source
        self.clipping_norm, self.noise_multiplier = float(clipping_norm), float(noise_multiplier)
        self.num_sites, self.expected_clients = num_sites, expected_clients
        self.target_quantile, self.clip_lr, self.count_noise_std = (
            target_quantile, clip_lr, count_noise_std,
        )  # fmt: skip

    def aggregate(self, updates: Sequence[ClientUpdate], *, server_round: int) -> AggregateResult:
        """Clip, sum with uniform weights, noise (central), divide, then ``inner.apply_mean``."""
        if not updates:
            raise AggregationError(f"round {server_round}: empty update list, nothing to aggregate")
        if self.mode == "central":
            total, event, metrics = self._central(updates)
        else:
            total, event, metrics = self._distributed(updates)
        denominator = self.expected_clients or len(updates)
        mean = tuple(t / denominator for t in total)
        return self._finish(mean, event, metrics, server_round)

    def apply_mean(
        self, mean_delta: Arrays, *, server_round: int, num_updates: int | None = None
    ) -> AggregateResult:
        """Distributed mode under HE: the decrypted mean already carries the sites' noise shares.

        ``num_updates`` is how many sites' shares are in the sum (default ``num_sites``).
        """
        if self.mode != "distributed" or self.num_sites is None:
            raise ConfigError(
                "central client-level DP needs the plaintext updates at the coordinator; under HE "
                "use mode='distributed' (sites add noise shares) or call aggregate()"
            )
        n = self.num_sites if num_updates is None else num_updates
        z = self.noise_multiplier * math.sqrt(n / self.num_sites)
        return self._finish(mean_delta, dp_event.GaussianDpEvent(z), {}, server_round)

    def _finish(
        self, mean: Arrays, event: dp_event.DpEvent, metrics: dict[str, float], server_round: int
    ) -> AggregateResult:
        result = self.inner.apply_mean(mean, server_round=server_round)
        return AggregateResult(
            step=result.step,
            metrics={**result.metrics, **metrics},
            dp_events=(*result.dp_events, event),
        )

    def _central(self, updates: Sequence[ClientUpdate]) -> _Release:
        c, n = self.clipping_norm, len(updates)
        clipped = [clip_to_norm(u.delta, clipping_norm=c) for u in updates]
        total = _sum(clipped)
        metrics: dict[str, float] = {
            "dp_clipping_norm": c,
            "dp_noise_multiplier": self.noise_multiplier,
        }
        if self.clipping == "fixed":
            z_delta = self.noise_multiplier
            event: dp_event.DpEvent = dp_event.GaussianDpEvent(z_delta)
        else:
            z_delta, sigma_b = self._adaptive_noise(n)
            event = dp_event.ComposedDpEvent(
                [dp_event.GaussianDpEvent(z_delta), dp_event.GaussianDpEvent(2 * sigma_b)]
            )
            metrics["dp_unclipped_fraction_noised"] = self._adapt(updates, sigma_b)
        noised = tuple(t + gaussian_noise(t.shape, std=z_delta * c, source=self.source) for t in total)
        return noised, event, metrics

    def _adaptive_noise(self, n: int) -> tuple[float, float]:
        """(z_delta, sigma_b) per Andrew et al. 2021, Sec. 3: both together are Gaussian(z)."""
        z = self.noise_multiplier
        sigma_b = self.count_noise_std or 0.05 * (self.expected_clients or n)
        if z >= 2 * sigma_b:
            raise ConfigError(
                f"adaptive clipping: count_noise_std {sigma_b} is too small for noise_multiplier "
                f"{z} (need z < 2 sigma_b); raise count_noise_std or use more sites per round"
            )
        return (z**-2 - (2 * sigma_b) ** -2) ** -0.5, sigma_b

    def _adapt(self, updates: Sequence[ClientUpdate], sigma_b: float) -> float:
        """Geometric update of C from the noised unclipped fraction (Andrew et al. 2021, Alg. 1)."""
        c, m = self.clipping_norm, self.expected_clients or len(updates)
        centered = sum((l2_norm(u.delta) <= c) - 0.5 for u in updates)
        noised = centered + float(gaussian_noise(1, std=sigma_b, source=self.source)[0])
        fraction = noised / m + 0.5
        self.clipping_norm = c * math.exp(-self.clip_lr * (fraction - self.target_quantile))
        return fraction

    def _distributed(self, updates: Sequence[ClientUpdate]) -> _Release:
        """Sum the already-noised deltas; reject any far outside clip bound + noise headroom."""
        c, k = self.clipping_norm, self.num_sites or 1  # num_sites is set: checked at init
        dim = sum(a.size for a in updates[0].delta)
        share_std = self.noise_multiplier * c / math.sqrt(k)
        bound = c + share_std * (math.sqrt(dim) + _HEADROOM_SIGMAS)
        for u in updates:
            norm = l2_norm(u.delta)
            if norm > bound:
                raise UpdateError(
                    f"site {u.site!r}: update norm {norm:.4g} exceeds clipping norm {c} plus "
                    f"noise headroom ({bound:.4g}); the site must run clip_and_add_noise_share"
                )
        total = _sum([u.delta for u in updates])
        z = self.noise_multiplier * math.sqrt(len(updates) / k)
        metrics = {"dp_clipping_norm": c, "dp_noise_multiplier": z}
        return total, dp_event.GaussianDpEvent(z), metrics


def _sum(deltas: Sequence[Arrays]) -> Arrays:
    """Per-tensor sum over sites, uniform weights; raises on mismatched shapes."""
    try:
        return tuple(np.sum(arrays, axis=0) for arrays in zip(*deltas, strict=True))
    except ValueError as err:
        raise AggregationError(f"updates have mismatched shapes: {err}") from err


def _problems(
    inner: object,
    clipping_norm: float,
    noise_multiplier: float,
    mode: str,
    clipping: str,
    num_sites: int | None,
    target_quantile: float,
    clip_lr: float,
    count_noise_std: float | None,
    expected_clients: int | None,
) -> list[str]:
    out = []
    if not callable(getattr(inner, "apply_mean", None)):
        out.append(
            f"inner aggregator {type(inner).__name__} has no apply_mean; client-level DP needs "
            "a mean-based aggregator (FedAvg, FedAdam, FedYogi ...)"
        )
    if not (math.isfinite(clipping_norm) and clipping_norm > 0):
        out.append(f"clipping_norm must be finite and > 0, got {clipping_norm}")
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        out.append(f"noise_multiplier must be finite and > 0, got {noise_multiplier}")
    if mode not in get_args(DPMode):
        out.append(f"mode must be one of {', '.join(get_args(DPMode))}, got {mode!r}")
    if clipping not in get_args(ClippingMode):
        out.append(f"clipping must be one of {', '.join(get_args(ClippingMode))}, got {clipping!r}")
    if mode == "distributed" and (num_sites is None or num_sites < 1):
        out.append(f"mode='distributed' needs num_sites >= 1, got {num_sites}")
    if mode == "distributed" and clipping == "adaptive":
        out.append("adaptive clipping is implemented for mode='central' only")
    if not 0 < target_quantile < 1:
        out.append(f"target_quantile must be in (0, 1), got {target_quantile}")
    if not clip_lr > 0:
        out.append(f"clip_lr must be > 0, got {clip_lr}")
    if count_noise_std is not None and not count_noise_std > 0:
        out.append(f"count_noise_std must be > 0, got {count_noise_std}")
    elif count_noise_std is not None and noise_multiplier >= 2 * count_noise_std:
        out.append(
            f"adaptive clipping needs noise_multiplier < 2 * count_noise_std, got "
            f"{noise_multiplier} >= 2 * {count_noise_std}"
        )
    if expected_clients is not None and expected_clients < 1:
        out.append(f"expected_clients must be >= 1, got {expected_clients}")
    return out
