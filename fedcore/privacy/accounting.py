"""Privacy accounting: every mechanism is a ``dp_accounting`` event, composed by its accountants.

Nothing here computes epsilon itself: events are built from ``dp_accounting.dp_event`` and handed to
``dp_accounting.pld.PLDAccountant`` (default) or ``dp_accounting.rdp.RdpAccountant``
(Meiser & Mohammadi 2018, Koskela et al. 2020 for PLD; Mironov 2017 for RDP). The neighbouring
relation is add-or-remove-one, the accountants' default.

Events are stored in the ledger as JSON through a small explicit serializer for the event types
fedcore emits; any other event type raises instead of being stored or skipped.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

import dp_accounting
from dp_accounting import dp_event, pld, rdp

from fedcore.errors import PrivacyError

__all__ = [
    "PLD_DISCRETIZATION",
    "AccountantName",
    "calibrate_dpsgd_noise",
    "calibrate_gaussian",
    "compose",
    "dpsgd_event",
    "epsilon",
    "event_from_json",
    "event_to_json",
    "gaussian_event",
    "laplace_event",
    "make_accountant",
]

AccountantName = Literal["pld", "rdp"]

PLD_DISCRETIZATION = 1e-3
"""PLD ``value_discretization_interval``. Pessimistic discretization keeps epsilon an upper bound;
1e-3 is 5-10x faster than the library's 1e-4 and moves epsilon by < 0.1% on DP-SGD workloads."""

_ACCOUNTANTS: dict[str, Callable[[], dp_accounting.PrivacyAccountant]] = {
    "pld": lambda: pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION),
    "rdp": rdp.RdpAccountant,
}


def make_accountant(accountant: AccountantName) -> dp_accounting.PrivacyAccountant:
    """A fresh, empty accountant by name; raises ``PrivacyError`` listing the allowed names."""
    if accountant not in _ACCOUNTANTS:
        raise PrivacyError(
            f"unknown accountant {accountant!r}; allowed: {', '.join(get_args(AccountantName))}"
        )
    return _ACCOUNTANTS[accountant]()


def _check_noise(noise_multiplier: float, problems: list[str]) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        problems.append(f"noise_multiplier must be finite and > 0, got {noise_multiplier}")


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise PrivacyError("; ".join(problems))


def gaussian_event(*, noise_multiplier: float, count: int = 1) -> dp_event.DpEvent:
    """``count`` releases of the Gaussian mechanism with std ``noise_multiplier * sensitivity``."""
    problems: list[str] = []
    _check_noise(noise_multiplier, problems)
    if count < 1:
        problems.append(f"count must be >= 1, got {count}")
    _raise_if(problems)
    event = dp_event.GaussianDpEvent(float(noise_multiplier))
    return event if count == 1 else dp_event.SelfComposedDpEvent(event, int(count))


def laplace_event(*, noise_multiplier: float, count: int = 1) -> dp_event.DpEvent:
    """``count`` releases of the Laplace mechanism, scale ``noise_multiplier * L1 sensitivity``."""
    problems: list[str] = []
    _check_noise(noise_multiplier, problems)
    if count < 1:
        problems.append(f"count must be >= 1, got {count}")
    _raise_if(problems)
    event = dp_event.LaplaceDpEvent(float(noise_multiplier))
    return event if count == 1 else dp_event.SelfComposedDpEvent(event, int(count))


def dpsgd_event(*, noise_multiplier: float, sample_rate: float, steps: int) -> dp_event.DpEvent:
    """DP-SGD (Abadi et al. 2016, Alg. 1): ``steps`` Poisson-sampled Gaussian steps, self-composed.

    ``steps`` is the number of optimizer steps actually run: rounds x local steps per round.
    """
    problems: list[str] = []
    _check_noise(noise_multiplier, problems)
    if not 0 < sample_rate <= 1:
        problems.append(f"sample_rate must be in (0, 1], got {sample_rate}")
    if steps < 1:
        problems.append(f"steps must be >= 1 (rounds x local steps), got {steps}")
    _raise_if(problems)
    step = dp_event.PoissonSampledDpEvent(
        float(sample_rate), dp_event.GaussianDpEvent(float(noise_multiplier))
    )
    return dp_event.SelfComposedDpEvent(step, int(steps))


def compose(events: Sequence[dp_event.DpEvent]) -> dp_event.DpEvent:
    """One event for a sequence of (adaptively) composed events; identical events are grouped.

    Grouping ``k`` identical events into ``SelfComposedDpEvent(e, k)`` gives the same accounting
    and lets the PLD accountant self-convolve once instead of ``k`` times.
    """
    counts = Counter(event_to_json(e) for e in events)
    parts: list[dp_event.DpEvent] = []
    for text, k in counts.items():
        event = event_from_json(text)
        parts.append(event if k == 1 else dp_event.SelfComposedDpEvent(event, k))
    return dp_event.ComposedDpEvent(parts)


def epsilon(
    events: Sequence[dp_event.DpEvent],
    *,
    delta: float,
    accountant: AccountantName = "pld",
) -> float:
    """Epsilon at ``delta`` of all ``events`` composed, by a ``dp_accounting`` accountant.

    Raises ``PrivacyError`` for a ``delta`` outside (0, 1) or an event the accountant does not
    support (never skipped).
    """
    if not 0 < delta < 1:
        raise PrivacyError(f"delta must be in (0, 1), got {delta}")
    if not events:
        return 0.0
    event = compose(events)
    acc = make_accountant(accountant)
    if not acc.supports(event):
        raise PrivacyError(f"accountant {accountant!r} does not support event {event!r}")
    return float(acc.compose(event).get_epsilon(delta))


def _bracket(gap: Callable[[float], float]) -> dp_accounting.ExplicitBracketInterval:
    """A noise interval [lo, hi] with gap(lo) > 0 >= gap(hi), found by halving/doubling from 1."""
    lo, hi = 1.0, 1.0
    while gap(hi) > 0:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise PrivacyError("no noise multiplier <= 1e6 meets the target epsilon")
    while lo == hi or gap(lo) <= 0:
        lo, hi = lo / 2, lo
        if lo < 1e-3:
            raise PrivacyError("target epsilon is met even with noise multiplier 1e-3; lower it")
    return dp_accounting.ExplicitBracketInterval(lo, hi)


def _calibrate(
    make_event: Callable[[float], dp_event.DpEvent],
    *,
    target_epsilon: float,
    delta: float,
    accountant: AccountantName,
    tol: float,
) -> float:
    """The smallest noise multiplier whose event spends at most ``target_epsilon`` (Brent's method
    in ``dp_accounting.calibrate_dp_mechanism``; the result is guaranteed within the target)."""
    problems: list[str] = []
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        problems.append(f"target_epsilon must be finite and > 0, got {target_epsilon}")
    if not 0 < delta < 1:
        problems.append(f"delta must be in (0, 1), got {delta}")
    _raise_if(problems)
    make_event(1.0)  # validates the other arguments

    def gap(sigma: float) -> float:
        return epsilon([make_event(sigma)], delta=delta, accountant=accountant) - target_epsilon

    sigma = dp_accounting.calibrate_dp_mechanism(
        lambda: make_accountant(accountant),
        make_event,
        target_epsilon,
        delta,
        bracket_interval=_bracket(gap),
        tol=tol,
    )
    return float(sigma)


def calibrate_dpsgd_noise(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantName = "pld",
    tol: float = 1e-4,
) -> float:
    """The smallest DP-SGD noise multiplier whose ``steps`` steps spend at most ``target_epsilon``.

    ``steps`` must be the steps that will actually run: rounds x local steps.
    """
    return _calibrate(
        lambda z: dpsgd_event(noise_multiplier=z, sample_rate=sample_rate, steps=steps),
        target_epsilon=target_epsilon,
        delta=delta,
        accountant=accountant,
        tol=tol,
    )


def calibrate_gaussian(
    *,
    target_epsilon: float,
    delta: float,
    count: int = 1,
    accountant: AccountantName = "pld",
    tol: float = 1e-4,
) -> float:
    """The smallest Gaussian noise multiplier whose ``count`` releases spend at most ``target_epsilon``."""
    return _calibrate(
        lambda z: gaussian_event(noise_multiplier=z, count=count),
        target_epsilon=target_epsilon,
        delta=delta,
        accountant=accountant,
        tol=tol,
    )


# --- JSON serializer ------------------------------------------------------------------------

_FIELDS: dict[str, tuple[type[dp_event.DpEvent], tuple[str, ...]]] = {
    "no_op": (dp_event.NoOpDpEvent, ()),
    "gaussian": (dp_event.GaussianDpEvent, ("noise_multiplier",)),
    "laplace": (dp_event.LaplaceDpEvent, ("noise_multiplier",)),
    "discrete_laplace": (dp_event.DiscreteLaplaceDpEvent, ("noise_parameter", "sensitivity")),
    "poisson_sampled": (dp_event.PoissonSampledDpEvent, ("sampling_probability", "event")),
    "self_composed": (dp_event.SelfComposedDpEvent, ("event", "count")),
    "composed": (dp_event.ComposedDpEvent, ("events",)),
    "zcdp": (dp_event.ZCDpEvent, ("rho", "xi")),  # secure-aggregation noise (fedcore.secagg.dp); RDP only
}
_TYPE_OF = {cls: name for name, (cls, _) in _FIELDS.items()}


def _to_obj(event: dp_event.DpEvent) -> dict[str, Any]:
    name = _TYPE_OF.get(type(event))
    if name is None:
        raise PrivacyError(f"cannot serialize {type(event).__name__}; supported events: {', '.join(_FIELDS)}")
    obj: dict[str, Any] = {"type": name}
    for field in _FIELDS[name][1]:
        value = getattr(event, field)
        if field == "event":
            value = _to_obj(value)
        elif field == "events":
            value = [_to_obj(e) for e in value]
        obj[field] = value
    return obj


def event_to_json(event: dp_event.DpEvent) -> str:
    """Canonical JSON (sorted keys, no NaN) of a supported event; others raise ``PrivacyError``."""
    return json.dumps(_to_obj(event), sort_keys=True, separators=(",", ":"), allow_nan=False)


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PrivacyError(f"event field {field!r} must be a finite number, got {value!r}")
    return float(value)


def _from_obj(obj: Any) -> dp_event.DpEvent:
    if not isinstance(obj, Mapping) or obj.get("type") not in _FIELDS:
        raise PrivacyError(f"not a supported event object: {obj!r}; types: {', '.join(_FIELDS)}")
    cls, fields = _FIELDS[obj["type"]]
    if set(obj) != {"type", *fields}:
        raise PrivacyError(f"event {obj['type']!r} needs fields {list(fields)}, got {sorted(obj)}")
    kwargs: dict[str, Any] = {}
    for field in fields:
        value = obj[field]
        if field == "event":
            kwargs[field] = _from_obj(value)
        elif field == "events":
            if not isinstance(value, list):
                raise PrivacyError(f"event field 'events' must be a list, got {value!r}")
            kwargs[field] = [_from_obj(v) for v in value]
        elif field in ("count", "sensitivity"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PrivacyError(f"event field {field!r} must be an int >= 0, got {value!r}")
            kwargs[field] = value
        else:
            kwargs[field] = _number(value, field)
    return cls(**kwargs)


def event_from_json(text: str) -> dp_event.DpEvent:
    """Inverse of ``event_to_json``; malformed or unknown input raises ``PrivacyError``."""
    try:
        obj = json.loads(text)
    except (TypeError, ValueError) as err:
        raise PrivacyError(f"event JSON does not parse: {err}; got {text!r:.200}") from err
    return _from_obj(obj)
