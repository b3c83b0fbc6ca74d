"""Cost estimate of HE aggregation for ``fedcore estimate JOB``: bytes, seconds and memory.

Seconds are measured on a small calibration sample (a throwaway key set with the same parameters,
a few ciphertexts) and scaled linearly by the number of ciphertexts, which is how the work grows:
every operation is per ciphertext. Byte counts are the wire bytes of an encrypted update (header,
checksums and ciphertexts) per ciphertext, scaled the same way.

What travels per site in an HE job of ``R`` rounds (``fedcore.flower.strategy``): the train
message of round 1 carries the initial model in plaintext (float32); every round's evaluate message
carries that round's encrypted sum. The train message of rounds 2..R carries no sum to a site that
evaluated the round before (it names the sum it applied by its SHA-256); a site that did not (a
sampled job, a failure, a restarted coordinator) gets the sums it lacks. So a site that answers every
round downloads ``R`` encrypted sums and uploads ``R`` encrypted updates: one sum per round, which
``download_bytes_per_site`` counts.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fedcore.errors import ConfigError
from fedcore.he.keys import generate_keyset
from fedcore.he.params import DEFAULT_PARAMS, HEParams
from fedcore.he.update import decrypt_mean, encrypt_update, sum_encrypted

__all__ = ["HECostEstimate", "estimate_cost"]

_CALIBRATION_CIPHERTEXTS = 4
_SUMS_PER_ROUND = 1  # a site receives each round's sum once, with the evaluate (see the docstring)


@dataclass(frozen=True)
class HECostEstimate:
    """Per-round HE costs for one model size and number of sites.

    ``bytes_per_param`` is upload bytes / float32 bytes (4 per parameter): 1.0 would be as small
    as sending the plain float32 update. Upload is per site (site -> coordinator, one encrypted
    update per round); ``sum_bytes`` is one encrypted sum, and ``download_bytes_per_site`` the two
    copies of it a site receives per round (with the evaluate and with the next train, see the
    module docstring). Memory is the peak of ciphertext and float64 buffers held at once
    (interpreter and library overhead excluded).
    """

    num_params: int
    num_sites: int
    num_ciphertexts: int
    upload_bytes_per_site: int
    sum_bytes: int
    download_bytes_per_site: int
    upload_bytes_per_round: int
    download_bytes_per_round: int
    bytes_per_param: float
    encrypt_seconds_per_site: float
    aggregate_seconds: float
    decrypt_seconds_per_site: float
    coordinator_memory_bytes: int
    site_memory_bytes: int
    params: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _calibrate(params: HEParams, num_sites: int) -> dict[str, float]:
    """Per-ciphertext seconds and bytes, measured on a throwaway key set."""
    ctx = generate_keyset(params)
    pub = ctx.public()
    n = _CALIBRATION_CIPHERTEXTS * params.slots_per_ciphertext
    rng = np.random.default_rng(0)
    sample = (rng.uniform(-1.0, 1.0, n) * min(1.0, params.max_abs_value),)
    sites = max(2, min(num_sites, 4))
    t0 = time.perf_counter()
    up = encrypt_update(ctx, sample, weight=1.0)
    t1 = time.perf_counter()
    total = sum_encrypted(pub, [up] * sites)
    t2 = time.perf_counter()
    decrypt_mean(ctx, total)
    t3 = time.perf_counter()
    cts = _CALIBRATION_CIPHERTEXTS
    return {
        "encrypt_s": (t1 - t0) / cts,
        "add_s": (t2 - t1) / (cts * sites),
        "decrypt_s": (t3 - t2) / cts,
        "up_bytes": len(up.to_bytes()) / cts,
        "down_bytes": len(total.to_bytes()) / cts,
    }


def estimate_cost(num_params: int, *, num_sites: int, params: HEParams = DEFAULT_PARAMS) -> HECostEstimate:
    """Estimate one HE round's cost for a model of ``num_params`` parameters.

    Parameters
    ----------
    num_params
        Parameters in the update (> 0).
    num_sites
        Sites whose updates are summed each round (1 .. ``params.max_sites``).
    params
        The key set's parameters.
    """
    if num_params <= 0 or not 1 <= num_sites <= params.max_sites:
        raise ConfigError(
            f"need num_params > 0 and 1 <= num_sites <= max_sites={params.max_sites}, got "
            f"num_params={num_params}, num_sites={num_sites}; create keys with a larger max_sites"
        )
    cal = _calibrate(params, num_sites)
    cts = math.ceil(num_params / params.slots_per_ciphertext)
    up, down = round(cal["up_bytes"] * cts), round(cal["down_bytes"] * cts)
    floats = 8 * num_params
    return HECostEstimate(
        num_params=num_params,
        num_sites=num_sites,
        num_ciphertexts=cts,
        upload_bytes_per_site=up,
        sum_bytes=down,
        download_bytes_per_site=_SUMS_PER_ROUND * down,
        upload_bytes_per_round=up * num_sites,
        download_bytes_per_round=_SUMS_PER_ROUND * down * num_sites,
        bytes_per_param=up / (4 * num_params),
        encrypt_seconds_per_site=cal["encrypt_s"] * cts,
        aggregate_seconds=cal["add_s"] * cts * num_sites,
        decrypt_seconds_per_site=cal["decrypt_s"] * cts,
        coordinator_memory_bytes=up * num_sites + down,
        site_memory_bytes=3 * floats + up + down,
        params=params.to_dict(),
    )
