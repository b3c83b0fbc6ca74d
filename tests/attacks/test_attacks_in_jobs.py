"""A job's [attack]: checked before Flower starts, applied only at the chosen simulated sites (update
attacks at the coordinator with the round's honest view, label flips to the sites' training labels),
refused by a real site."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcore.aggregators import ClientUpdate
from fedcore.attacks import ALIE
from fedcore.config import JobRequest, load_job
from fedcore.errors import ConfigError
from fedcore.harness.attacks import PoisonedLabels, UpdateAttacks, build_attack, check_attack
from fedcore.harness.loop import run_inprocess
from tests.adversarial.coordinator import MEDICAL, Coordinator, make_site

SITES = ["cleveland", "hungary", "switzerland", "va"]


def _job(*sets: str, name: str = "fedavg"):  # type: ignore[no-untyped-def]
    return load_job(MEDICAL / "jobs" / f"{name}.toml", list(sets))


@pytest.mark.parametrize(
    ("sets", "problem"),
    [
        (('attack.name="sign_flipp"', 'attack.sites=["va"]'), "unknown attack 'sign_flipp'"),
        (
            ('attack.name="scaling"', 'attack.sites=["mayo"]'),
            "sites ['mayo'] are not sites of this simulation",
        ),
        (
            ('attack.name="scaling"', f"attack.sites={SITES}"),
            "every site attacks: leave at least one honest site",
        ),
        (
            ('attack.name="scaling"', 'attack.sites=["va"]', 'attack.factor="ten"'),
            "factor must be a finite number",
        ),
        (('attack.name="gaussian"', 'attack.sites=["va"]', "attack.sigmaa=1"), "does not accept options"),
    ],
)
def test_a_bad_attack_is_refused_before_flower_starts(sets: tuple[str, ...], problem: str) -> None:
    spec = _job(*sets)
    with pytest.raises(ConfigError, match=r"job\.toml \[attack\]: ") as err:
        check_attack(spec, SITES, "job.toml")
    assert problem in str(err.value) and "\n" not in str(err.value)


def test_an_update_attack_is_refused_under_he_and_a_label_flip_is_not() -> None:
    with pytest.raises(ConfigError, match="replaces plaintext updates at the coordinator"):
        check_attack(_job('attack.name="ipm"', 'attack.sites=["va"]', name="he"), SITES, "he.toml")
    check_attack(_job('attack.name="label_flip"', 'attack.sites=["va"]', name="he"), SITES, "he.toml")
    with pytest.raises(ConfigError, match="under secure aggregation sees only their sum"):
        check_attack(
            _job('attack.name="scaling"', 'attack.sites=["va"]', name="secagg"), SITES, "secagg.toml"
        )
    check_attack(_job('attack.name="label_flip"', 'attack.sites=["va"]', name="secagg"), SITES, "s.toml")


def _updates() -> list[ClientUpdate]:
    rng = np.random.default_rng(0)
    return [ClientUpdate((rng.normal(size=3),), 10 + i, site) for i, site in enumerate(SITES)]


def test_update_attacks_replace_only_the_attackers_with_the_honest_view() -> None:
    ups = _updates()
    spec = _job('attack.name="ipm"', 'attack.sites=["va", "hungary"]', "attack.epsilon=0.5").attack
    out = UpdateAttacks(spec, seed=1)(ups, 3)
    honest = [u.delta[0] for u in ups if u.site in ("cleveland", "switzerland")]
    for before, after in zip(ups, out, strict=True):
        if before.site in ("va", "hungary"):
            np.testing.assert_allclose(
                after.delta[0], -0.5 * np.mean(honest, axis=0), rtol=1e-6
            )  # float32 wire
            assert after.num_examples == before.num_examples
        else:
            assert after is before
    alie = build_attack(_job('attack.name="alie"', 'attack.sites=["va", "hungary"]').attack)
    assert alie == ALIE(f=2)  # f: the number of attacking sites, unless the job sets it
    gauss = _job('attack.name="gaussian"', 'attack.sites=["va"]').attack
    a, b, c = (UpdateAttacks(gauss, seed=s)(ups, 1)[3].delta[0] for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)  # seeded by the job, the round, the site


def test_label_flips_reach_only_the_attacking_sites_training_labels() -> None:
    request = JobRequest(
        "j", 4, _job('attack.name="label_flip"', 'attack.sites=["va"]', "attack.fraction=0.5")
    )
    y = np.array([0, 1, 1, 0, 1, 0, 0, 1], dtype=np.float32)
    poisoned = PoisonedLabels()
    assert poisoned.train_labels(request, "cleveland", y) is y
    flipped = poisoned.train_labels(request, "va", y)
    assert flipped.dtype == y.dtype and int((flipped != y).sum()) == 4
    assert np.array_equal(flipped, poisoned.train_labels(request, "va", y))  # the same rows every round


def test_a_real_site_refuses_a_job_with_an_attack(tmp_path: Path) -> None:
    c = Coordinator(make_site(tmp_path), tmp_path / "s")  # a node's ClientApp: no simulation hook
    request = JobRequest("att", 4, _job('attack.name="label_flip"', 'attack.sites=["cleveland"]'))
    answer = c.admit(request)
    assert not answer["accepted"]
    assert (
        "it asks for a simulated attack ([attack]); attacks run only in `fedcore run` simulations"
        in answer["reason"]
    )


def test_a_label_flip_at_one_site_changes_the_model_in_process(tmp_path: Path, shared_data: Path) -> None:
    files = [make_site(tmp_path, name=n) for n in SITES]
    clean, _ = run_inprocess(_job("job.rounds=2", "train.local_steps=20"), files, seed=3)
    flipped, _ = run_inprocess(
        _job("job.rounds=2", "train.local_steps=20", 'attack.name="label_flip"', 'attack.sites=["va"]'),
        files,
        seed=3,
    )
    assert max(float(np.abs(a - b).max()) for a, b in zip(clean, flipped, strict=True)) > 1e-3
