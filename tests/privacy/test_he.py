"""HE aggregation: oracle against the plaintext weighted mean, wire round-trips, keys and secrets."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcore.errors import CiphertextError, ConfigError, KeyMismatchError, UpdateError
from fedcore.he import (
    DEFAULT_PARAMS,
    NVFLARE_DEFAULT_PARAMS,
    EncryptedUpdate,
    HEParams,
    PublicContext,
    SecretContext,
    decrypt_mean,
    encrypt_update,
    estimate_cost,
    generate_keyset,
    init_keys,
    load_public_context,
    load_secret_context,
    save_keyset,
    sum_encrypted,
)
from fedcore.he.update import site_limit

pytestmark = pytest.mark.he


@pytest.fixture(scope="module")
def keys() -> tuple[SecretContext, PublicContext]:
    ctx = generate_keyset()
    return ctx, ctx.public()


def _tolerance(params: HEParams, num_sites: int, total_weight: float) -> float:
    """BFV: each site's weighted value is rounded to 2**-frac_bits; the HE sum itself is exact."""
    return num_sites * 2.0 ** -(params.frac_bits + 1) / total_weight + 1e-12


def _round(keys, updates, weights):
    ctx, pub = keys
    encrypted = [encrypt_update(ctx, u, weight=w) for u, w in zip(updates, weights, strict=True)]
    wire = [EncryptedUpdate.from_bytes(e.to_bytes()) for e in encrypted]
    total = EncryptedUpdate.from_bytes(sum_encrypted(pub, wire).to_bytes())
    return decrypt_mean(ctx, total), total


def _plain_mean(updates, weights):
    total = sum(weights)
    return [
        sum(w * u[i] for u, w in zip(updates, weights, strict=True)) / total for i in range(len(updates[0]))
    ]


shapes_st = st.lists(st.lists(st.integers(1, 30), min_size=0, max_size=3), min_size=1, max_size=3)


@settings(max_examples=8, deadline=None)
@given(shapes=shapes_st, num_sites=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_decrypted_mean_equals_plaintext_weighted_mean(keys, shapes, num_sites, seed):
    rng = np.random.default_rng(seed)
    updates = [tuple(rng.uniform(-1.0, 1.0, s) for s in shapes) for _ in range(num_sites)]
    weights = [float(w) for w in rng.uniform(0.01, 1.0, num_sites)]
    mean, total = _round(keys, updates, weights)
    tol = _tolerance(DEFAULT_PARAMS, num_sites, sum(weights))
    for got, want in zip(mean, _plain_mean(updates, weights), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=tol)
    assert total.num_sites == num_sites and math.isclose(total.weight, sum(weights))


def test_sum_at_max_sites_with_extreme_values_is_exact(keys):
    ctx, pub = keys
    n, limit = DEFAULT_PARAMS.max_sites, site_limit(DEFAULT_PARAMS)  # what one honest site encrypts
    step = 2.0**-DEFAULT_PARAMS.frac_bits
    value = math.floor(limit / step) * step  # representable, so the sum must be exact
    signs = np.where(np.arange(100) % 2 == 0, 1.0, -1.0)
    updates = [(signs * value * (1 if k % 3 else -1),) for k in range(n)]
    total = sum_encrypted(pub, [encrypt_update(ctx, u, weight=1.0) for u in updates])
    (mean,) = decrypt_mean(ctx, total)
    np.testing.assert_array_equal(mean * n, sum(u[0] for u in updates))


def test_ckks_nvflare_params_within_tolerance():
    ctx = generate_keyset(NVFLARE_DEFAULT_PARAMS)
    rng = np.random.default_rng(1)
    updates = [(rng.uniform(1e-2, 1.0, (70, 70)),) for _ in range(3)]
    mean, _ = _round((ctx, ctx.public()), updates, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(mean[0], _plain_mean(updates, [1.0, 2.0, 3.0])[0], atol=1e-6)


def test_inputs_not_mutated_and_outputs_read_only(keys):
    arr = np.linspace(-1, 1, 10)
    before = arr.copy()
    (mean,), _ = _round(keys, [(arr,)], [0.5])
    np.testing.assert_array_equal(arr, before)
    assert not mean.flags.writeable


def test_wire_round_trip_preserves_every_field(keys):
    ctx, _ = keys
    update = encrypt_update(ctx, (np.ones((3, 4)), np.zeros(5000)), weight=0.25)
    again = EncryptedUpdate.from_bytes(update.to_bytes())
    assert again == update
    assert update.num_ciphertexts == 2 and update.num_values == 5012
    assert update.ciphertext_bytes == sum(len(c) for c in update.ciphertexts)


def test_upload_is_at_most_4x_float32_bytes(keys):
    ctx, _ = keys
    n = 4 * DEFAULT_PARAMS.slots_per_ciphertext
    update = encrypt_update(ctx, (np.random.default_rng(2).uniform(-1, 1, n),), weight=1.0)
    assert len(update.to_bytes()) / (4 * n) <= 4.0


@pytest.mark.parametrize("cut", [1, 20, 100, -1, -5000])
def test_truncated_bytes_raise_ciphertext_error(keys, cut):
    data = encrypt_update(keys[0], (np.ones(5000),), weight=1.0).to_bytes()
    with pytest.raises(CiphertextError):
        EncryptedUpdate.from_bytes(data[:cut])


@pytest.mark.parametrize("where", [3, 7, 40, 0.5, -1])
def test_flipped_byte_raises_ciphertext_error(keys, where):
    data = bytearray(encrypt_update(keys[0], (np.ones(5000),), weight=1.0).to_bytes())
    pos = int(len(data) * where) if isinstance(where, float) else where
    data[pos] ^= 0x01
    with pytest.raises(CiphertextError):
        EncryptedUpdate.from_bytes(bytes(data))


def test_public_context_holds_no_secret_and_cannot_decrypt(keys, tmp_path):
    ctx, pub = keys
    total = sum_encrypted(pub, [encrypt_update(ctx, (np.ones(10),), weight=1.0)])
    save_keyset(ctx, tmp_path)
    loaded = load_public_context(tmp_path / "public.ctx")
    assert not loaded.tenseal.is_private() and not pub.tenseal.is_private()
    reloaded = ts.context_from(loaded.to_bytes())
    assert not reloaded.is_private()
    vector = ts.bfv_vector_from(reloaded, total.ciphertexts[0])
    with pytest.raises(ValueError, match="secret"):
        vector.decrypt()
    with pytest.raises(KeyMismatchError, match="SecretContext"):
        decrypt_mean(loaded, total)  # type: ignore[arg-type]
    with pytest.raises(KeyMismatchError):
        SecretContext(reloaded, DEFAULT_PARAMS, pub.keyset_id)
    assert len(loaded.to_bytes()) < 1000  # parameters only: no key of any kind


def test_update_from_another_key_set_raises(keys):
    ctx, pub = keys
    other = generate_keyset()
    assert other.keyset_id != ctx.keyset_id
    foreign = encrypt_update(other, (np.ones(10),), weight=1.0)
    mine = encrypt_update(ctx, (np.ones(10),), weight=1.0)
    with pytest.raises(KeyMismatchError, match=other.keyset_id):
        sum_encrypted(pub, [mine, foreign])
    with pytest.raises(KeyMismatchError):
        decrypt_mean(other, sum_encrypted(pub, [mine]))


def test_bad_updates_are_refused(keys):
    ctx, pub = keys
    with pytest.raises(UpdateError, match="limit"):
        encrypt_update(ctx, (np.full(3, DEFAULT_PARAMS.max_abs_value),), weight=2.0)
    with pytest.raises(UpdateError, match="NaN"):
        encrypt_update(ctx, (np.array([np.nan]),), weight=1.0)
    with pytest.raises(UpdateError, match="weight"):
        encrypt_update(ctx, (np.ones(3),), weight=0.0)
    a, b = (encrypt_update(ctx, (np.ones(s),), weight=1.0) for s in (3, 4))
    with pytest.raises(UpdateError, match="shapes"):
        sum_encrypted(pub, [a, b])
    with pytest.raises(ValueError, match="at least one"):
        sum_encrypted(pub, [])


def test_max_sites_is_enforced():
    ctx = generate_keyset(HEParams(max_sites=2))
    update = encrypt_update(ctx, (np.ones(3),), weight=1.0)
    with pytest.raises(UpdateError, match="max_sites"):
        sum_encrypted(ctx.public(), [update] * 3)


def test_invalid_params_report_every_problem():
    with pytest.raises(ConfigError) as err:
        HEParams(coeff_mod_bit_sizes=(60, 60), frac_bits=40, max_sites=0)
    assert "128-bit" in str(err.value) and "frac_bits" in str(err.value)
    assert "max_sites" in str(err.value)


def test_key_files_round_trip_with_safe_modes(tmp_path):
    keyset_id = init_keys(tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / "secret.ctx").st_mode) == 0o600
    ctx = load_secret_context(tmp_path / "secret.ctx")
    pub = load_public_context(tmp_path / "public.ctx")
    assert ctx.keyset_id == pub.keyset_id == keyset_id
    assert keyset_id in (tmp_path / "keyset.json").read_text()
    (mean,), _ = _round((ctx, pub), [(np.arange(5.0),)], [1.0])
    np.testing.assert_allclose(mean, np.arange(5.0), atol=1e-6)
    with pytest.raises(ConfigError, match="already holds"):
        init_keys(tmp_path)


def test_key_file_errors_say_what_to_do(tmp_path):
    init_keys(tmp_path)
    with pytest.raises(KeyMismatchError, match=r"coordinator must get public\.ctx"):
        load_public_context(tmp_path / "secret.ctx")
    with pytest.raises(KeyMismatchError, match=r"sites need secret\.ctx"):
        load_secret_context(tmp_path / "public.ctx")
    with pytest.raises(KeyMismatchError, match="keys init"):
        load_secret_context(tmp_path / "nope.ctx")
    (tmp_path / "junk.ctx").write_bytes(b"hello world")
    with pytest.raises(ConfigError, match="not a fedcore key file"):
        load_public_context(tmp_path / "junk.ctx")
    data = bytearray((tmp_path / "secret.ctx").read_bytes())
    data[-10] ^= 0xFF
    Path(tmp_path / "bad.ctx").write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="corrupt"):
        load_secret_context(tmp_path / "bad.ctx")


def test_estimate_cost_scales_with_model_size():
    small = estimate_cost(10_000, num_sites=3)
    big = estimate_cost(1_000_000, num_sites=3)
    assert big.num_ciphertexts == math.ceil(1_000_000 / DEFAULT_PARAMS.slots_per_ciphertext)
    assert big.upload_bytes_per_round == 3 * big.upload_bytes_per_site
    assert big.bytes_per_param <= 4.0 and big.encrypt_seconds_per_site > small.encrypt_seconds_per_site
    with pytest.raises(ConfigError, match="max_sites"):
        estimate_cost(10, num_sites=1000)


@pytest.mark.slow
@pytest.mark.long
def test_ten_million_parameters_round_trip(keys):
    rng = np.random.default_rng(3)
    updates = [(rng.uniform(-1, 1, (1000, 5000)), rng.uniform(-1, 1, 5_000_000)) for _ in range(2)]
    mean, total = _round(keys, updates, [1.0, 3.0])
    for got, want in zip(mean, _plain_mean(updates, [1.0, 3.0]), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=_tolerance(DEFAULT_PARAMS, 2, 4.0))
    assert total.ciphertext_bytes / (4 * 10_000_000) <= 4.0


def test_running_sum_equals_sum_encrypted_and_a_bad_update_leaves_it_untouched(keys):
    """The coordinator's one-pass check-and-add gives the same bytes as sum_encrypted; an update
    that fails its check (a damaged ciphertext, another key set, max_sites) is not added."""
    from fedcore.he import RunningSum

    ctx, pub = keys
    rng = np.random.default_rng(3)
    shapes = ((3, 4000), (1500,))
    updates = [
        encrypt_update(ctx, tuple(rng.uniform(-1, 1, s) for s in shapes), weight=w) for w in (1.0, 2.5, 0.5)
    ]
    bad = updates[0].ciphertexts
    damaged = EncryptedUpdate(
        ctx.keyset_id,
        DEFAULT_PARAMS.scheme,
        shapes,
        1.0,
        1,
        DEFAULT_PARAMS.slots_per_ciphertext,
        (bad[0], bad[1][: len(bad[1]) // 2], *bad[2:]),
    )
    foreign = encrypt_update(generate_keyset(), tuple(np.ones(s) for s in shapes), weight=1.0)
    running = RunningSum(pub)
    running.add(updates[0])
    with pytest.raises(CiphertextError, match="ciphertext 1 cannot be decoded"):
        running.add(damaged)  # the first ciphertext loads and would be added: it must not be
    with pytest.raises(KeyMismatchError):
        running.add(foreign)
    for u in updates[1:]:
        running.add(u)
    assert len(running) == 3
    assert running.result().to_bytes() == sum_encrypted(pub, updates).to_bytes()
    small = generate_keyset(HEParams(max_sites=2))
    two = RunningSum(small.public())
    one = encrypt_update(small, (np.ones(3),), weight=1.0)
    two.add(one)
    two.add(one)
    with pytest.raises(UpdateError, match="max_sites=2"):
        two.add(one)
    assert two.result().num_sites == 2


def test_native_bfv_encryption_decrypts_to_the_same_integers_as_tenseals_wrapper(
    keys: tuple[SecretContext, PublicContext],
) -> None:
    """encrypt_update calls TenSEAL's native BFVVector (skipping its Python wrapper's list/numpy
    round trip): a full and a short chunk, with the plain modulus' extreme values, decrypt exactly,
    and the wrapper reads them as ordinary BFV vectors."""
    from fedcore.he.update import _bfv_encrypt

    sec, _ = keys
    half = sec.params.plain_modulus // 2
    slots = sec.params.slots_per_ciphertext
    rng = np.random.default_rng(7)
    for n in (slots, 3):
        ints = rng.integers(-half, half, size=n, dtype=np.int64)
        ints[0], ints[-1] = -half, half
        vec = ts.bfv_vector_from(sec.tenseal, _bfv_encrypt(sec.tenseal, ints))
        assert vec.decrypt() == ints.tolist()
