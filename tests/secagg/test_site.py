"""Secure aggregation at a site: strict files, identities on disk, admission, the plan's noise charge."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from dp_accounting import rdp

from fedcore.cli.main import main
from fedcore.config.job import load_job
from fedcore.errors import ConfigError
from fedcore.privacy.accounting import epsilon
from fedcore.secagg.dp import Trust, lattice_sensitivity, site_epsilon
from fedcore.secagg.job import encoder
from fedcore.secagg.keyfile import load_identity, write_identity
from tests.adversarial.coordinator import Coordinator, job, make_site
from tests.adversarial.secagg_federation import NAMES, policy

MEDICAL = Path(__file__).resolve().parents[2] / "examples" / "medical"


def test_job_table_is_strict_and_exclusive_with_he(tmp_path: Path) -> None:
    path = MEDICAL / "jobs" / "secagg.toml"
    with pytest.raises(ConfigError, match="unknown key 'clip'"):
        load_job(path, ["privacy.secagg.clip=1"])
    with pytest.raises(ConfigError, match="exclusive"):
        load_job(path, ["privacy.he.enabled=true"])
    with pytest.raises(ConfigError, match='needs weight = "uniform"'):
        load_job(path, ["privacy.secagg.noise='ddgauss'", "privacy.secagg.noise_multiplier=1.0"])
    with pytest.raises(ConfigError, match="noise_multiplier > 0"):
        load_job(path, ["privacy.secagg.noise='skellam'", "privacy.secagg.weight='uniform'"])
    text = path.read_text()
    median = (
        text[: text.index("[aggregator]")]
        + '[aggregator]\nname = "median"\n'
        + text[text.index("[privacy") :]
    )
    (tmp_path / "median.toml").write_text(median)
    with pytest.raises(ConfigError, match="'median' needs single updates"):
        load_job(tmp_path / "median.toml")
    spec = load_job(path).secagg
    assert spec is not None and spec.modulus_bits == 32 and not spec.has_noise


def test_site_table_is_strict(tmp_path: Path) -> None:
    from fedcore.config.site import load_site

    bad = make_site(tmp_path, '[privacy]\n\n[secagg]\nthreshold = 1\nmembers = { a = "zz" }\ntrust = "all"\n')
    with pytest.raises(ConfigError) as err:
        load_site(bad)
    text = str(err.value)
    assert "threshold" in text and "64 hex" in text and "trust" in text


def test_keygen_writes_an_owner_only_identity_and_refuses_to_replace_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["secagg", "keygen", "--name", "cleveland", "--out", str(tmp_path)]) == 0
    public = capsys.readouterr().out.strip().splitlines()[-1]
    key = tmp_path / "cleveland.ed25519"
    assert os.stat(key).st_mode & 0o777 == 0o600
    ident = load_identity(key, "cleveland")
    assert public == f'cleveland = "{ident.public_key.hex()}"'
    assert main(["secagg", "keygen", "--name", "cleveland", "--out", str(tmp_path)]) == 2  # never replaced
    with pytest.raises(ConfigError, match="not a fedcore"):
        load_identity(key, "hungary")  # another site's identity
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_identity(key, "cleveland")


def _site(tmp_path: Path, extra: str = "", *, in_members: bool = True) -> Coordinator:
    keys, members = {}, {}
    for name in NAMES:
        keys[name], members[name] = write_identity(name, tmp_path / "keys")
    if not in_members:
        members.pop("cleveland")
    text = policy(members, keys["cleveland"], extra=extra)
    return Coordinator(make_site(tmp_path / "site", text), tmp_path / "state")


def test_admission_needs_the_section_and_this_site_in_its_own_member_list(tmp_path: Path) -> None:
    request = job("secagg", "job.min_sites=3", job_id="sa-adm")
    plain = Coordinator(make_site(tmp_path / "plain", "[privacy]\nmin_sites = 3\n"), tmp_path / "s1")
    refused = plain.admit(request)
    assert not refused["accepted"] and "no [secagg] section" in refused["reason"]
    outsider = _site(tmp_path / "b", in_members=False)
    refused = outsider.admit(job("secagg", "job.min_sites=3", job_id="sa-adm2"))
    assert not refused["accepted"] and "member list" in refused["reason"]
    assert _site(tmp_path / "c").admit(job("secagg", "job.min_sites=3", job_id="sa-adm3"))["accepted"]


@pytest.mark.parametrize("trust", ["own", "threshold"])
def test_distributed_noise_is_planned_and_charged_as_zcdp_against_dp_accounting(
    tmp_path: Path, trust: str
) -> None:
    """A ddgauss job: the plan's epsilon is dp_accounting's RDP epsilon of the site's own noise (or,
    when its policy trusts the threshold, of the noise of min_honest sites), every round composed."""
    sets = ["job.min_sites=3", "privacy.secagg.weight='uniform'", "privacy.secagg.noise='ddgauss'",
            "privacy.secagg.noise_multiplier=2.0", "privacy.secagg.clipping_norm=1.0"]  # fmt: skip
    site = _site(tmp_path, extra=f'trust = "{trust}"\n')
    request = job("secagg", *sets, job_id=f"sa-dp-{trust}")
    admission = site.admit(request)
    assert admission["accepted"], admission
    plan = site.site.plan(request)
    (mech,) = [m for m in plan.mechanisms if m.name == "secagg"]
    assert mech.unit == "site" and mech.uniform_weight and mech.round_events is not None
    enc = encoder(request.spec.secagg, request.num_sites)  # type: ignore[arg-type]
    dim = 14  # the medical logreg: 13 features + bias (uniform weight: no weight coordinate)
    l2, l1 = lattice_sensitivity(l2_norm=1.0, scale=enc.point.scale, dim=dim)
    honest = 1 if trust == "own" else site.site.site.secagg.planned_min_honest(4)  # type: ignore[union-attr]
    rounds = request.spec.rounds
    reference = site_epsilon(
        enc.noise, l2_sensitivity=l2, l1_sensitivity=l1, dim=dim, trust=Trust(trust), min_honest=honest,  # type: ignore[arg-type]
        rounds=rounds, delta=1e-5,
    )  # fmt: skip
    charged = epsilon(list(mech.events), delta=1e-5)
    golden = float(rdp.RdpAccountant().compose(mech.events[0]).get_epsilon(1e-5))
    assert charged == pytest.approx(golden, rel=1e-9)  # composed by RDP, as dp_accounting does
    # the reference formulas' epsilon (integer orders): dp_accounting's own orders may even beat it
    assert charged == pytest.approx(reference, rel=0.05)
    # each of the 4 sites adds std z C s / sqrt(4) = s: the summed noise has std z C (float units)
    assert math.isclose(enc.noise.scale, enc.point.scale, rel_tol=1e-12)  # type: ignore[union-attr]
