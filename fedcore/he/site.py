"""The sites' side of an HE round: encrypt the weighted update, and apply the decrypted sum.

The coordinator only adds ciphertexts. Each site keeps its own copy of the global model and of
the server optimizer's state, decrypts the sum, divides by the total weight and applies the
optimizer step itself. The step is deterministic, so every site computes the same global model
(this is how FedAdam/FedYogi run under HE).

A site opens a sum only when it is the one sum of its round (``fedcore.site.sums``: every
contributor confirmed it, and confirms one per round), and only with the weight and markers the sum
itself holds (``open_training_sum``); the header's weight and site count are the coordinator's word.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from fedcore.aggregators.base import Aggregator, Arrays
from fedcore.errors import ConfigError, PolicyError
from fedcore.he.ciphertext import EncryptedUpdate
from fedcore.he.keys import SecretContext
from fedcore.he.markers import marker, marker_sum
from fedcore.he.update import encrypt_update, open_sum
from fedcore.site.sums import Attestor, SumClaim, check_claim

__all__ = [
    "HeSiteState",
    "SumCheck",
    "apply_encrypted_sum",
    "check_held_sum",
    "encrypt_delta",
    "open_training_sum",
    "sum_digest",
]


@dataclass(frozen=True)
class HeSiteState:
    """A site's view of the federation under HE: the global model after ``round``, and the
    :func:`sum_digest` of the encrypted sum it applied last (``""`` for the initial model)."""

    round: int
    global_arrays: Arrays
    optimizer_state: Arrays = ()
    digest: str = ""


def sum_digest(total: bytes) -> str:
    """SHA-256 (hex) of an encrypted sum's wire bytes: what a train message names instead of
    carrying a sum the site already applied (the sum then travels once per round)."""
    return hashlib.sha256(total).hexdigest()


def check_held_sum(state: HeSiteState | None, *, he_round: int, digest: str) -> HeSiteState:
    """A train message that names round ``he_round``'s sum by its digest instead of carrying it:
    the site goes on only from the model it built from exactly that sum.

    The coordinator is the adversary: a site that holds another round's model, or a model from a
    sum with another digest, refuses rather than train from a model the others do not hold.
    """
    if state is None or state.round != he_round or state.digest != digest:
        held = (
            "no model" if state is None else f"round {state.round}'s model (sum {state.digest[:12] or '-'})"
        )
        raise PolicyError(
            f"the coordinator sent no encrypted sum, saying this site holds round {he_round}'s model "
            f"(sum {digest[:12]}), but it holds {held}; not training from it. Resend the sum "
            "(a restarted coordinator does: `fedcore resume`)"
        )
    return state


def encrypt_delta(
    secret: SecretContext, delta: Arrays, *, weight: float, job_id: str, server_round: int, site: str
) -> bytes:
    """A site's encrypted update of ``server_round``, its weight and its marker in the trailer."""
    mark = marker(secret, "train", job_id, server_round, site)
    return encrypt_update(secret, delta, weight=weight, marker=mark).to_bytes()


@dataclass(frozen=True)
class SumCheck:
    """What a site requires of a training sum before it applies it: the job's id, the floor and
    ceiling on its contributors (``min_sites``, the sites the job was sent to), and the tags it checks
    the contributors' confirmations with."""

    job_id: str
    floor: int
    ceiling: int
    attestor: Attestor
    who: str


def open_training_sum(
    total: bytes,
    claim: SumClaim,
    tags: Mapping[str, str],
    *,
    server_round: int,
    secret: SecretContext,
    check: SumCheck,
) -> Arrays:
    """The mean of round ``server_round``'s sum, once the site is sure it is the one sum of that
    round (``fedcore.site.sums``): claimed for this job and round, digest equal to the bytes, confirmed
    by each of its ``floor..ceiling`` contributors; then, decrypted, its values and weight within what
    that many sites encrypt (``open_sum``) and its markers those of exactly the named sites. Every
    failure is a ``PolicyError`` (or ``UpdateError``) naming what is wrong, and nothing is applied."""
    if (claim.job_id, claim.kind, claim.round) != (check.job_id, "train", server_round):
        raise PolicyError(
            f"{check.who} refuses the sum sent as round {server_round}'s: its claim names "
            f"{claim.kind} round {claim.round} of job {claim.job_id!r}"
        )
    if claim.digests != (sum_digest(total),):
        raise PolicyError(
            f"{check.who} refuses round {server_round}'s sum: its bytes are not the claimed sum"
        )
    check_claim(claim, tags, attestor=check.attestor, floor=check.floor, ceiling=check.ceiling, who=check.who)
    opened = open_sum(secret, EncryptedUpdate.from_bytes(total), contributors=len(claim.contributors))
    if opened.marker != marker_sum(secret, "train", check.job_id, server_round, claim.contributors):
        raise PolicyError(
            f"{check.who} refuses round {server_round}'s sum: it does not hold exactly one update of each "
            f"of {', '.join(claim.contributors)} (its markers do not add up); nothing applied"
        )
    return opened.mean


def apply_encrypted_sum(
    state: HeSiteState,
    total: bytes,
    mean: Callable[[], Arrays],
    *,
    server_round: int,
    make_aggregator: Callable[[], Aggregator],
) -> HeSiteState:
    """Take the server-optimizer step with round ``server_round``'s mean (once per round; ``mean``
    opens the sum, see :func:`open_training_sum`)."""
    if server_round <= state.round:
        return state  # already applied (an evaluate after the train of the same round)
    if server_round != state.round + 1:
        raise ConfigError(
            f"this site holds the global model of round {state.round} but was sent the sum of "
            f"round {server_round}; a site that missed a round must rejoin with a fresh state"
        )
    shaped = tuple(np.asarray(m, dtype=np.float64) for m in mean())
    agg = make_aggregator()
    load = getattr(agg, "load_state_arrays", None)
    if load is not None:
        load(state.optimizer_state)
    apply_mean = getattr(agg, "apply_mean", None)
    if apply_mean is None:
        raise ConfigError(f"aggregator {type(agg).__name__} has no apply_mean, so it cannot run under HE")
    step = apply_mean(shaped, server_round=server_round).step
    new_global = tuple(g + s for g, s in zip(state.global_arrays, step, strict=True))
    get_state = getattr(agg, "state_arrays", None)
    opt = get_state() if get_state is not None else ()
    return HeSiteState(server_round, new_global, opt, sum_digest(total))
