"""Attacks: each against a per-coordinate oracle, Gaussian noise statistically, labels, registry."""

from __future__ import annotations

import ast
import statistics
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

import fedcore.attacks
from fedcore.aggregators import ClientUpdate
from fedcore.attacks import (
    ALIE,
    IPM,
    Attack,
    DataAttack,
    Gaussian,
    LabelFlip,
    Scaling,
    SignFlip,
    alie_z,
    attack_names,
    flip_labels,
    make_attack,
    register_attack,
)
from fedcore.errors import ConfigError, UnknownNameError
from fedcore.testing import random_updates

RNG = np.random.default_rng


def _own_and_honest() -> tuple[ClientUpdate, list[ClientUpdate]]:
    ups = random_updates(6, seed=1)
    return ups[0], ups[1:]


@pytest.mark.parametrize(("attack", "factor"), [(SignFlip(), -1.0), (Scaling(factor=10.0), 10.0)])
def test_own_update_attacks(attack: Attack, factor: float) -> None:
    own, honest = _own_and_honest()
    before = [a.copy() for a in own.delta]
    out = attack.corrupt(own, honest=honest, rng=RNG(0))
    assert (out.site, out.num_examples) == (own.site, own.num_examples)
    for o, b in zip(out.delta, before, strict=True):
        np.testing.assert_array_equal(o, factor * b)
    assert all(np.array_equal(a, b) for a, b in zip(own.delta, before, strict=True))


def test_gaussian_is_calibrated_noise() -> None:
    """200k draws: the sample std has relative standard error 1/sqrt(2N) = 0.16%; 1% is > 6 sigma."""
    own = ClientUpdate(delta=(np.full(200_000, 7.0),), num_examples=3, site="x")
    out = Gaussian(sigma=2.0).corrupt(own, honest=[], rng=RNG(3)).delta[0]
    assert abs(out.std() / 2.0 - 1) < 0.01
    assert abs(out.mean()) < 6 * 2.0 / np.sqrt(200_000)  # the update itself is discarded
    again = Gaussian(sigma=2.0).corrupt(own, honest=[], rng=RNG(3)).delta[0]
    np.testing.assert_array_equal(out, again)  # randomness is the argument


@pytest.mark.parametrize(("n", "f"), [(11, 2), (50, 24), (5, 1), (20, 3)])
def test_alie_z_matches_the_paper(n: int, f: int) -> None:
    s = (n // 2 + 1) - f
    assert alie_z(n, f) == pytest.approx(norm.ppf((n - s) / n), rel=1e-9)


def test_alie_z_refuses_an_attacker_majority() -> None:
    with pytest.raises(ConfigError, match="n=6, f=4"):
        alie_z(6, 4)


def test_alie_matches_per_coordinate_oracle() -> None:
    own, honest = _own_and_honest()
    out = ALIE(f=2).corrupt(own, honest=honest, rng=RNG(0))
    z = norm.ppf((7 - ((7 // 2 + 1) - 2)) / 7)  # n = 5 honest + 2 attackers
    for i, tensor in enumerate(out.delta):
        for idx in np.ndindex(tensor.shape):
            col = [float(u.delta[i][idx]) for u in honest]
            assert tensor[idx] == pytest.approx(statistics.mean(col) - z * statistics.stdev(col), rel=1e-9)
    assert ALIE(z=1.5).corrupt(own, honest=honest, rng=RNG(0)).delta[0][0, 0] == pytest.approx(
        statistics.mean(u.delta[0][0, 0] for u in honest)
        - 1.5 * statistics.stdev(u.delta[0][0, 0] for u in honest)
    )


def test_ipm_is_minus_epsilon_honest_mean() -> None:
    own, honest = _own_and_honest()
    out = IPM(epsilon=0.5).corrupt(own, honest=honest, rng=RNG(0))
    for i, tensor in enumerate(out.delta):
        np.testing.assert_allclose(tensor, -0.5 * sum(u.delta[i] for u in honest) / len(honest), rtol=1e-12)


def test_omniscient_attacks_need_honest_updates() -> None:
    own, _ = _own_and_honest()
    assert [a.needs_honest for a in (SignFlip(), Scaling(), Gaussian(), ALIE(f=1), IPM())] == [
        False, False, False, True, True,
    ]  # fmt: skip
    for attack in (ALIE(f=1), IPM()):
        with pytest.raises(ConfigError, match="needs the round's honest updates"):
            attack.corrupt(own, honest=[], rng=RNG(0))


def test_bad_options_are_refused() -> None:
    for build, match in [
        (lambda: Scaling(factor=float("inf")), "factor must be a finite number"),
        (lambda: Gaussian(sigma=0.0), "sigma must be a finite number > 0"),
        (lambda: ALIE(), "ALIE needs z, or f >= 1"),
        (lambda: IPM(epsilon=-1.0), "epsilon must be"),
        (lambda: LabelFlip(fraction=0.0), "fraction must be in"),
    ]:
        with pytest.raises(ConfigError, match=match):
            build()


def test_flip_labels_binary_and_multiclass() -> None:
    y = np.array([0, 1, 1, 0])
    np.testing.assert_array_equal(flip_labels(y), [1, 0, 0, 1])
    assert flip_labels(np.array([0.0, 1.0])).dtype == np.float64
    np.testing.assert_array_equal(flip_labels(np.array([True, False])), [False, True])
    np.testing.assert_array_equal(flip_labels(np.array([0, 3, 1, 2]), num_classes=4), [3, 0, 2, 1])
    np.testing.assert_array_equal(y, [0, 1, 1, 0])  # input untouched
    with pytest.raises(ConfigError, match="found 2: pass num_classes"):
        flip_labels(np.array([0, 2, 1]))
    with pytest.raises(ConfigError, match=r"0\.\.3, found 4"):
        flip_labels(np.array([0, 4]), num_classes=4)
    with pytest.raises(ConfigError, match="num_classes must be an integer >= 2"):
        flip_labels(y, num_classes=1)


def test_label_flip_fraction_flips_exactly_that_many_rows() -> None:
    y = np.zeros(1000, dtype=np.int64)
    out = LabelFlip(fraction=0.3).corrupt_labels(y, rng=RNG(4))
    assert int(out.sum()) == 300
    np.testing.assert_array_equal(out, LabelFlip(fraction=0.3).corrupt_labels(y, rng=RNG(4)))
    assert isinstance(LabelFlip(), DataAttack) and not isinstance(LabelFlip(), Attack)


def test_registry() -> None:
    assert {"sign_flip", "scaling", "gaussian", "alie", "ipm", "label_flip"} <= set(attack_names())
    assert make_attack("Scaling", factor=3.0) == Scaling(factor=3.0)
    assert isinstance(make_attack("ipm"), Attack)
    with pytest.raises(UnknownNameError, match=r"known attacks: .*alie"):
        make_attack("mimic")
    with pytest.raises(UnknownNameError, match="does not accept options"):
        make_attack("sign_flip", factor=2.0)
    with pytest.raises(ValueError, match="already registered"):
        register_attack("alie", IPM)


def test_attacks_import_no_flower_and_no_site_code() -> None:
    """Static: the package imports only numpy, the stdlib, fedcore's wire-free aggregator types and
    the plug-in registry (``fedcore.plugins``: stdlib and ``fedcore.errors`` at import)."""
    allowed = {"fedcore.aggregators.base", "fedcore.errors", "fedcore.plugins", "fedcore.attacks.base",
               "fedcore.attacks.labels",
               "fedcore.attacks.updates", "numpy", "numpy.typing", "__future__", "collections.abc",
               "dataclasses", "math", "statistics", "typing"}  # fmt: skip
    package = Path(fedcore.attacks.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert set(names) <= allowed, f"{path.name} imports {set(names) - allowed}"
