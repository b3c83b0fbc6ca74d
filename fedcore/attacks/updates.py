"""Built-in Byzantine update attacks (simulation only). Each is a frozen dataclass with ``corrupt``;
``needs_honest`` says whether it reads the round's honest updates (an omniscient attacker)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import ClassVar

import numpy as np

from fedcore.aggregators.base import Arrays, ClientUpdate
from fedcore.errors import ConfigError

__all__ = ["ALIE", "IPM", "Gaussian", "Scaling", "SignFlip", "alie_z"]


def _finite(name: str, value: float, *, positive: bool = False) -> None:
    ok = isinstance(value, int | float) and math.isfinite(value) and (value > 0 or not positive)
    if not ok:
        raise ConfigError(f"{name} must be a finite number{' > 0' if positive else ''}, got {value!r}")


def _honest_mean(honest: Sequence[ClientUpdate], attack: str) -> Arrays:
    if not honest:
        raise ConfigError(f"{attack} needs the round's honest updates, got none; run it with honest sites")
    return tuple(np.mean([u.delta[i] for u in honest], axis=0) for i in range(len(honest[0].delta)))


@dataclass(frozen=True)
class SignFlip:
    """Send ``-delta``: the attacker's own honest update reversed (needs no honest view). The
    byzfl-style variant that flips the *honest mean* is ``IPM(epsilon=1)``."""

    needs_honest: ClassVar[bool] = False

    def corrupt(
        self, update: ClientUpdate, *, honest: Sequence[ClientUpdate], rng: np.random.Generator
    ) -> ClientUpdate:
        return replace(update, delta=tuple(-a for a in update.delta))


@dataclass(frozen=True)
class Scaling:
    """Send ``factor * delta`` (boosting; model replacement in Bagdasaryan et al. 2020, "How To
    Backdoor Federated Learning", AISTATS, Sec. 3.3, scales by ``n / eta``). Needs no honest view."""

    factor: float = 10.0
    needs_honest: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _finite("factor", self.factor)

    def corrupt(
        self, update: ClientUpdate, *, honest: Sequence[ClientUpdate], rng: np.random.Generator
    ) -> ClientUpdate:
        return replace(update, delta=tuple(self.factor * a for a in update.delta))


@dataclass(frozen=True)
class Gaussian:
    """Send pure noise N(0, sigma^2) per coordinate instead of the update (byzfl's Gaussian).
    Needs no honest view; the noise comes from ``rng`` (simulation: not a secure source)."""

    sigma: float = 1.0
    needs_honest: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _finite("sigma", self.sigma, positive=True)

    def corrupt(
        self, update: ClientUpdate, *, honest: Sequence[ClientUpdate], rng: np.random.Generator
    ) -> ClientUpdate:
        return replace(update, delta=tuple(rng.normal(0.0, self.sigma, size=a.shape) for a in update.delta))


def alie_z(n: int, f: int) -> float:
    """Baruch, Baruch, Goldberg 2019, "A Little Is Enough", NeurIPS, Sec. 3, Alg. 3:
    ``s = floor(n/2 + 1) - f`` supporters are needed, ``z = Phi^-1((n - s) / n)``."""
    s = math.floor(n / 2 + 1) - f
    if not 0 < f < n or s <= 0:
        raise ConfigError(
            f"ALIE needs 0 < f < n with f < floor(n/2 + 1) (an honest majority to hide in), got n={n}, f={f}"
        )
    return NormalDist().inv_cdf((n - s) / n)


@dataclass(frozen=True)
class ALIE:
    """ALIE, "a little is enough" (Baruch et al. 2019, Alg. 3): send ``mu - z sigma`` per coordinate,
    ``mu`` and ``sigma`` the honest updates' mean and sample standard deviation. Small enough to
    pass as honest to Krum, medians and trimmed means, consistent enough to bias them every round.

    ``z`` fixed, or (``z=None``) from ``alie_z(n, f)`` with ``n = len(honest) + f`` and ``f`` the
    number of attacking sites (the simulation knows it). Needs the honest view.
    """

    f: int | None = None
    z: float | None = None
    needs_honest: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.z is None and (self.f is None or isinstance(self.f, bool) or self.f < 1):
            raise ConfigError(
                f"ALIE needs z, or f >= 1 (the number of attackers) to derive it; got f={self.f!r}"
            )
        if self.z is not None:
            _finite("z", self.z)

    def corrupt(
        self, update: ClientUpdate, *, honest: Sequence[ClientUpdate], rng: np.random.Generator
    ) -> ClientUpdate:
        mean = _honest_mean(honest, "ALIE")
        z = self.z if self.z is not None else alie_z(len(honest) + (self.f or 0), self.f or 0)
        ddof = 1 if len(honest) > 1 else 0
        std = tuple(np.std([u.delta[i] for u in honest], axis=0, ddof=ddof) for i in range(len(mean)))
        return replace(update, delta=tuple(m - z * s for m, s in zip(mean, std, strict=True)))


@dataclass(frozen=True)
class IPM:
    """Inner-product manipulation (Xie, Koyejo, Gupta 2020, "Fall of Empires", UAI, Sec. 4): send
    ``-epsilon * mean(honest)``, so the aggregate's inner product with the true step turns negative.
    Small ``epsilon`` (0.1) targets medians and Krum; large (above ``(n - f) / f``) targets the
    mean. Needs the honest view."""

    epsilon: float = 0.1
    needs_honest: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _finite("epsilon", self.epsilon, positive=True)

    def corrupt(
        self, update: ClientUpdate, *, honest: Sequence[ClientUpdate], rng: np.random.Generator
    ) -> ClientUpdate:
        return replace(update, delta=tuple(-self.epsilon * m for m in _honest_mean(honest, "IPM")))
