"""The sites' side of an HE round: encrypt the weighted update, and apply the decrypted sum.

The coordinator only adds ciphertexts. Each site keeps its own copy of the global model and of
the server optimizer's state, decrypts the sum, divides by the total weight and applies the
optimizer step itself. The step is deterministic, so every site computes the same global model
(this is how FedAdam/FedYogi run under HE).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedcore.aggregators.base import Aggregator, Arrays
from fedcore.errors import ConfigError, PolicyError
from fedcore.he.ciphertext import EncryptedUpdate
from fedcore.he.keys import SecretContext
from fedcore.he.update import decrypt_mean, encrypt_update

__all__ = ["HeSiteState", "apply_encrypted_sum", "check_held_sum", "encrypt_delta", "sum_digest"]


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


def encrypt_delta(secret: SecretContext, delta: Arrays, *, weight: float) -> bytes:
    return encrypt_update(secret, delta, weight=weight).to_bytes()


def apply_encrypted_sum(
    state: HeSiteState,
    total: bytes,
    *,
    server_round: int,
    secret: SecretContext,
    make_aggregator: Callable[[], Aggregator],
    min_sites: int = 1,
) -> HeSiteState:
    """Decrypt round ``server_round``'s sum and take the server-optimizer step (once per round).

    A sum that says it holds fewer than ``min_sites`` updates (the site's floor) is refused: with one
    shared key, a site decrypting a "sum" of one other site's update would read that update. (The
    count is the coordinator's word; a coordinator that forges it is in the threat model's
    colluding case, see docs/privacy.md.)
    """
    if server_round <= state.round:
        return state  # already applied (an evaluate after the train of the same round)
    if server_round != state.round + 1:
        raise ConfigError(
            f"this site holds the global model of round {state.round} but was sent the sum of "
            f"round {server_round}; a site that missed a round must rejoin with a fresh state"
        )
    encrypted = EncryptedUpdate.from_bytes(total)
    if encrypted.num_sites < min_sites:
        raise PolicyError(
            f"the encrypted sum of round {server_round} holds {encrypted.num_sites} updates, fewer than this "
            f"site's min_sites {min_sites}; it is not decrypted"
        )
    if encrypted.num_sites > secret.params.max_sites:
        raise PolicyError(
            f"the encrypted sum of round {server_round} says it holds {encrypted.num_sites} updates, more "
            f"than this site's key set sums exactly (max_sites {secret.params.max_sites}); not decrypted"
        )
    mean = decrypt_mean(secret, encrypted)
    shaped = tuple(np.asarray(m, dtype=np.float64) for m in mean)
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
