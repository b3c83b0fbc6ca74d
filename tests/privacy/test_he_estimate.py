"""``fedcore estimate`` counts what travels: wire bytes, and the encrypted sum once per round
(tests/flower/test_he_simulation.py compares it with the bytes a real job sends)."""

from __future__ import annotations

import numpy as np
import pytest

from fedcore.he import DEFAULT_PARAMS, encrypt_update, generate_keyset, sum_encrypted
from tests.adversarial.coordinator import MEDICAL

pytestmark = pytest.mark.he


def test_estimate_counts_the_wire_bytes_and_one_sum_per_round() -> None:
    from fedcore.he import estimate_cost

    est = estimate_cost(3 * DEFAULT_PARAMS.slots_per_ciphertext, num_sites=5)
    ctx = generate_keyset()
    values = np.linspace(-1.0, 1.0, 3 * DEFAULT_PARAMS.slots_per_ciphertext)
    update = encrypt_update(ctx, (values,), weight=1.0)
    total = sum_encrypted(ctx.public(), [update] * 5)
    assert est.upload_bytes_per_site == pytest.approx(len(update.to_bytes()), rel=0.01)
    assert est.sum_bytes == pytest.approx(len(total.to_bytes()), rel=0.01)
    # a site receives each round's sum once, with the evaluate (the next train names it by digest)
    assert est.download_bytes_per_site == est.sum_bytes
    assert est.download_bytes_per_round == 5 * est.download_bytes_per_site


def test_estimate_job_counts_what_travels_in_the_whole_job() -> None:
    from fedcore.cli.estimate import estimate_job, model_size

    size, sites = model_size(MEDICAL / "jobs" / "he.toml")
    est = estimate_job(MEDICAL / "jobs" / "he.toml")
    rounds = est["rounds"]
    assert est["max_sites"] == DEFAULT_PARAMS.max_sites
    assert est["upload_bytes_whole_job"] == rounds * sites * est["upload_bytes_per_site"]
    assert est["download_bytes_whole_job"] == sites * (rounds * est["sum_bytes"] + 4 * size)
    assert estimate_job(MEDICAL / "jobs" / "he.toml", num_sites=100)["max_sites"] == 100
