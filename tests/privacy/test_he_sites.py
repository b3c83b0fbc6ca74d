"""HE that scales with the federation: ``max_sites`` chosen at the key ceremony, exact sums of up to
``max_sites`` ciphertexts, and an oversize federation refused before anyone trains."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tenseal.sealapi as sealapi

from fedcore.cli import main
from fedcore.errors import ConfigError
from fedcore.flower.protocol import ServerSettings, check_he_sites
from fedcore.flower.server_app import run_job
from fedcore.he import (
    DEFAULT_PARAMS,
    EncryptedUpdate,
    HEParams,
    SecretContext,
    decrypt_mean,
    encrypt_update,
    generate_keyset,
    load_public_context,
    sum_encrypted,
)
from fedcore.he.params import check_max_sites, fresh_noise_bound, params_for_sites
from fedcore.he.update import site_limit
from tests.adversarial.coordinator import MEDICAL, Coordinator, job, make_site

pytestmark = pytest.mark.he


def _noise_budget(ctx: SecretContext, total: EncryptedUpdate) -> int:
    """SEAL's invariant noise budget (bits) left in the first ciphertext of ``total``."""
    import tenseal as ts

    vec = ts.bfv_vector_from(ctx.tenseal, total.ciphertexts[0])
    decryptor = sealapi.Decryptor(ctx.tenseal.seal_context().data, ctx.tenseal.secret_key().data)
    return int(decryptor.invariant_noise_budget(vec.ciphertext()[0]))


def _extreme_values(params: HEParams, rng: np.random.Generator, n: int) -> np.ndarray:
    """Random fixed-point values within what one honest site encrypts (``site_limit``), a third of them
    at the bound (BFV's noise does not depend on the values: the sum's exactness is tested as well)."""
    step = 2.0**-params.frac_bits
    top = math.floor(site_limit(params) / step)
    ints = rng.integers(-top, top + 1, n)
    ints[::3] = np.where(rng.random(ints[::3].size) < 0.5, -top, top)
    return ints * step


def _exact_sum(sites: int) -> tuple[SecretContext, EncryptedUpdate, np.ndarray, np.ndarray]:
    """``sites`` encryptions at the range's edge summed: the key set, the sum, and the integers it
    decrypts to beside the integers the sites encrypted."""
    ctx = generate_keyset(params_for_sites(sites))
    rng = np.random.default_rng(sites)
    values = [_extreme_values(ctx.params, rng, ctx.params.slots_per_ciphertext) for _ in range(sites)]
    total = sum_encrypted(ctx.public(), [encrypt_update(ctx, (v,), weight=1.0) for v in values])
    (mean,) = decrypt_mean(ctx, total)
    # back to the integers the sites encrypted: |sum| < 2**35, so float64 rounding (relative 1e-16)
    # cannot hide an error of one unit; a noise overflow would be off by at least one unit
    step = 2.0**ctx.params.frac_bits
    got = np.rint(mean * sites * step).astype(np.int64)
    want = np.sum([np.rint(v * step).astype(np.int64) for v in values], axis=0)
    return ctx, total, got, want


def test_1024_independent_encryptions_at_the_range_bound_decrypt_exactly() -> None:
    ctx, total, got, want = _exact_sum(1024)
    np.testing.assert_array_equal(got, want)
    assert total.num_sites == 1024 and ctx.params.max_sites == 1024
    assert _noise_budget(ctx, total) >= 1  # measured: 6 bits left of 11 fresh with [52, 52]


def test_the_same_ciphertext_added_max_sites_times_decrypts_exactly() -> None:
    """Correlated noise, the worst case of the bound: one ciphertext (noise e) summed into K*e."""
    ctx = generate_keyset(params_for_sites(1024))
    value = _extreme_values(ctx.params, np.random.default_rng(0), ctx.params.slots_per_ciphertext)
    update = encrypt_update(ctx, (value,), weight=1.0)
    total = sum_encrypted(ctx.public(), [update] * 1024)
    (mean,) = decrypt_mean(ctx, total)
    np.testing.assert_array_equal(mean, value)


def test_a_100_site_ceremony_sums_100_sites_exactly() -> None:
    ctx, total, got, want = _exact_sum(100)
    assert ctx.params.max_sites == 100 and total.num_sites == 100
    np.testing.assert_array_equal(got, want)


def test_parameters_grow_with_max_sites_and_keep_the_noise_bound() -> None:
    assert params_for_sites(64) == DEFAULT_PARAMS
    for sites in (1, 4, 100, 1024, 8192):
        p = params_for_sites(sites)
        primes = sealapi.CoeffModulus.Create(p.poly_modulus_degree, list(p.coeff_mod_bit_sizes))
        q = math.prod(m.value() for m in primes[:-1])
        assert 2 * sites * fresh_noise_bound(p) < q / p.plain_modulus
        assert p.frac_bits == DEFAULT_PARAMS.frac_bits and p.max_sites == sites
    assert params_for_sites(1024).coeff_mod_bit_sizes == (52, 52)


def test_parameters_that_cannot_sum_max_sites_exactly_are_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"max_sites=128 .*params_for_sites\(128\)"):
        HEParams(max_sites=128)  # the default primes: 12 bits of noise room, 128 sites need 12.43
    with pytest.raises(ConfigError, match="fewer than frac_bits=22; lower frac_bits"):
        params_for_sites(1 << 16)
    with pytest.raises(ConfigError, match="max_sites must be an integer >= 1, got 0"):
        params_for_sites(0)


def test_keys_init_takes_max_sites_and_records_it_for_both_sides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "init", "--out", str(tmp_path / "k"), "--max-sites", "1024"]) == 0
    assert "max_sites 1024" in capsys.readouterr().out
    public = load_public_context(tmp_path / "k" / "public.ctx")
    assert public.params == params_for_sites(1024)
    assert json.loads((tmp_path / "k" / "keyset.json").read_text())["params"]["max_sites"] == 1024
    assert main(["keys", "init", "--out", str(tmp_path / "d")]) == 0
    assert load_public_context(tmp_path / "d" / "public.ctx").params == DEFAULT_PARAMS


@pytest.mark.parametrize("bad", ["0", "-3", "many", "2.5"])
def test_keys_init_rejects_bad_max_sites_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["keys", "init", "--out", str(tmp_path), f"--max-sites={bad}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--max-sites: must be an integer >= 1" in err and "Traceback" not in err
    assert not (tmp_path / "public.ctx").exists()


class _NoTraining:
    """A Flower grid with ``nodes`` connected sites that fails the test if anything is sent."""

    def __init__(self, nodes: int) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.nodes + 1))

    def send_and_receive(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("the coordinator sent a message before refusing the job")


def _settings(tmp_path: Path, max_sites: int, expected: int) -> ServerSettings:
    ctx = generate_keyset(params_for_sites(max_sites))
    from fedcore.he import save_public

    save_public(ctx, tmp_path / "public.ctx")
    return ServerSettings(
        job_file=MEDICAL / "jobs" / "he.toml", expected_sites=expected, he_public_key=tmp_path / "public.ctx"
    )


@pytest.mark.parametrize(("expected", "connected"), [(5, 5), (1, 5)])
def test_coordinator_refuses_five_sites_on_a_four_site_key_set_before_asking_anyone(
    tmp_path: Path, expected: int, connected: int
) -> None:
    settings = _settings(tmp_path, 4, expected)
    with pytest.raises(ConfigError) as err:
        run_job(_NoTraining(connected), settings)  # type: ignore[arg-type]
    text = str(err.value)
    assert text.startswith("the coordinator: the job would sum up to 5 sites' encrypted updates")
    assert "max_sites=4" in text and "fedcore keys init --max-sites 8 --out KEYS" in text
    assert "\n" not in text


def test_default_ceremony_and_100_sites_are_refused_before_training(tmp_path: Path) -> None:
    """Decision: the default key set (max_sites 64) refuses a 100-site federation at job start;
    the fix it names (``--max-sites 128``) gives keys that sum 100 sites exactly (test above)."""
    settings = _settings(tmp_path, DEFAULT_PARAMS.max_sites, 100)
    with pytest.raises(
        ConfigError, match=r"max_sites=64; re-run the key ceremony with `fedcore keys init --max-sites 128"
    ):
        run_job(_NoTraining(100), settings)  # type: ignore[arg-type]
    public = load_public_context(tmp_path / "public.ctx")
    check_he_sites(public, 64)  # 64 sites go ahead
    check_max_sites(params_for_sites(128), 100, keyset_id="k", who="x")


def test_a_site_refuses_an_he_job_sent_to_more_sites_than_its_key_set_sums(tmp_path: Path) -> None:
    from fedcore.he import save_secret

    c = Coordinator(make_site(tmp_path), tmp_path / "state")
    save_secret(generate_keyset(params_for_sites(4)), c.site.guard.paths.he_secret_key)
    answer = c.admit(job("he", job_id="he-five", num_sites=5))
    assert not answer["accepted"]
    assert answer["reason"].startswith("site 'cleveland': the job would sum up to 5 sites'")
    assert "max_sites=4" in answer["reason"] and "--max-sites 8" in answer["reason"]
    assert c.admit(job("he", job_id="he-four", num_sites=4))["accepted"]


def test_simulation_keys_fit_the_sites_and_a_kept_small_key_set_is_refused(tmp_path: Path) -> None:
    from fedcore.config import load_site
    from fedcore.harness.app import simulation_keys
    from fedcore.he import load_secret_context, save_secret

    names = ("cleveland", "hungary", "switzerland", "va")
    sites = [load_site(make_site(tmp_path / "files", name=n)) for n in names]
    public = simulation_keys(True, tmp_path / "run", sites, tmp_path / "states")
    assert public is not None and load_public_context(public).params.max_sites == 4
    kept = tmp_path / "kept"
    save_secret(generate_keyset(params_for_sites(2)), kept / sites[0].name / "he_secret.ctx")
    with pytest.raises(ConfigError, match=r"up to 4 sites' .* max_sites=2; re-run the key ceremony"):
        simulation_keys(True, tmp_path / "run2", sites, kept)
    assert load_secret_context(kept / sites[0].name / "he_secret.ctx").params.max_sites == 2


def test_statistics_markers_fit_a_large_key_set() -> None:
    from fedcore.he.markers import marker

    ctx = generate_keyset(params_for_sites(1024))
    limit = (ctx.params.plain_modulus // 2) // ctx.params.max_sites
    assert all(0 <= marker(ctx, "statistics", "job", i, f"site-{i}") <= limit for i in range(50))
    big = max(marker(generate_keyset(), "statistics", "job", i, "s") for i in range(50))
    assert big >= 2**20  # 28 bits at 64 sites
