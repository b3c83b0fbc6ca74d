"""An adversarial coordinator against a real site: each finding of the privacy review, as an attack.

Every test drives the site's real ClientApp handlers (``tests/adversarial/coordinator.py``) with the
messages an attacker would craft, and asserts a refusal, or a charge that covers what was released.
Numbers refer to the findings of the site-enforcement issue.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from pathlib import Path

import dp_accounting
import numpy as np
import pytest

from fedcore.cli import main
from fedcore.clients.runtime import SiteRuntime
from fedcore.config import load_job, load_site
from fedcore.errors import AuditError, ConfigError, LedgerError, PolicyError
from fedcore.privacy.accounting import epsilon, event_from_json, gaussian_event
from fedcore.site.audit import AuditLog
from fedcore.site.ledger import PrivacyLedger
from tests.adversarial.coordinator import (
    DEFAULT_POLICY,
    MEDICAL,
    Coordinator,
    crafted,
    he_claim,
    job,
    make_site,
    train_claim,
)

DELTA = 1e-5


def _flat(arrays: tuple[np.ndarray, ...]) -> np.ndarray:
    return np.concatenate([a.ravel() for a in arrays])


def _ledger(c: Coordinator) -> PrivacyLedger:
    return c.site.guard.ledger


def _audit_kinds(c: Coordinator) -> list[str]:
    return [r.kind for r in c.site.guard.audit.records()]


# --- 1. noise seeded on the coordinator's word -------------------------------------------------


def test_1_a_job_cannot_ask_for_seeded_noise(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="secure_noise: was removed"):
        load_job(MEDICAL / "jobs" / "dp.toml", ["privacy.secure_noise=false"])
    c = Coordinator(make_site(tmp_path), tmp_path / "state")
    table = {**job().spec.table}
    table["privacy"] = {**table["privacy"], "secure_noise": False}
    answer = c.admit(crafted(table))
    assert not answer["accepted"] and "secure_noise: was removed" in answer["reason"]
    assert c.site.source.secure


def test_1_same_seed_round_site_and_model_do_not_reproduce_the_noise(tmp_path: Path) -> None:
    """The old replay attack: two jobs identical in everything the coordinator sends. With noise
    seeded from (job seed, round, site) their updates were equal; with the site's CSPRNG they differ
    by two independent noise draws, std sqrt(2) sigma C lr / B per weight."""
    c = Coordinator(make_site(tmp_path), tmp_path / "state")
    sets = ("train.local_steps=1", "train.lr=1.0", "model.name='mlp'", "model.hidden=[32]", "job.rounds=1")
    a, b = job("dp", *sets, job_id="replay-a"), job("dp", *sets, job_id="replay-b")
    plans = [c.admit(r)["plan"] for r in (a, b)]
    assert plans[0]["releases"] == plans[1]["releases"]
    g = c.model(a)
    (da, ma), (db, _) = c.train(a, 1, g), c.train(b, 1, g)
    sigma_c = ma["noise_multiplier"] * 1.1  # clip of the dp job
    expected = math.sqrt(2) * sigma_c / a.spec.train.batch_size
    diff = _flat(da) - _flat(db)  # 481 weights: the sample std has ~3% standard error
    assert float(np.std(diff)) > 0.7 * expected


# --- 2. rounds and job ids -----------------------------------------------------------------------


def test_2_rounds_beyond_the_plan_and_repeated_rounds_are_refused(tmp_path: Path) -> None:
    c = Coordinator(make_site(tmp_path), tmp_path / "state")
    req = job("dp", job_id="rounds")
    assert c.admit(req)["accepted"]
    g = c.model(req)
    first, _ = c.train(req, 1, g)
    # the same round again (a resumed coordinator's repeat) gets the very reply released before,
    # whatever model is sent: computing it again would be a second, uncharged release (fresh noise)
    again, _ = c.train(req, 1, c.model(req, seed=5))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    answered = 1
    for r in range(2, 31):  # 30 train messages on a 3-round job
        try:
            c.train(req, r, g)
            answered += 1
        except PolicyError as err:
            assert "rounds 1..3 only" in str(err) or "all given" in str(err)
    assert answered == 3
    with pytest.raises(PolicyError, match="all given"):
        c.train(req, 1, g)  # an older round than the last released one is not kept: refused
    charges = _ledger(c).summary().charges
    assert len(charges) == 3 and {ch.job_id for ch in charges} == {"rounds"}  # one per answered round
    planned = c.site.plan(req)
    charged = _ledger(c).job_charge("rounds")
    assert charged is not None and charged[0] == pytest.approx(planned.epsilon, rel=5e-3)  # never more
    kinds = _audit_kinds(c)
    assert (kinds.count("refuse"), kinds.count("release"), kinds.count("replay")) == (28, 3, 1)


def test_2_a_known_job_id_with_other_settings_is_refused(tmp_path: Path) -> None:
    c = Coordinator(make_site(tmp_path), tmp_path / "state")
    first = job("dp", job_id="same-id")
    assert c.admit(first)["accepted"]
    g = c.model(first)
    c.train(first, 1, g)
    looser = job("dp", "privacy.dpsgd.epsilon=5", job_id="same-id")
    answer = c.admit(looser)
    assert not answer["accepted"] and "admitted with other settings" in answer["reason"]
    with pytest.raises(PolicyError, match="settings differ from the admitted ones"):
        c.train(looser, 2, g)
    assert [ch.job_id for ch in _ledger(c).summary().charges] == ["same-id"]


def test_2_a_dp_job_reusing_a_non_dp_jobs_id_is_refused_and_audit_records_are_not_charges(
    tmp_path: Path,
) -> None:
    c = Coordinator(make_site(tmp_path), tmp_path / "state")
    plain = job("default", job_id="reused")
    assert c.admit(plain)["accepted"]
    c.train(plain, 1, c.model(plain))
    dp = job("dp", job_id="reused")
    assert not c.admit(dp)["accepted"]
    with pytest.raises(PolicyError, match="settings differ"):
        c.train(dp, 2, c.model(dp))
    assert _ledger(c).summary().charges == ()  # nothing charged, and nothing trained under "epsilon 0"
    assert "admit" in _audit_kinds(c) and "release" in _audit_kinds(c)


def test_2_train_without_admission_is_refused(tmp_path: Path) -> None:
    c = Coordinator(make_site(tmp_path), tmp_path / "state")
    req = job("dp", job_id="never-admitted")
    with pytest.raises(PolicyError, match="was not admitted"):
        c.train(req, 1, c.model(req))
    assert _ledger(c).summary().charges == ()


# --- 3. central client-level DP: charged but not applied ------------------------------------------


def test_3_central_client_dp_is_refused_by_job_site_and_policy(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mode = 'central' is refused by every site"):
        load_job(MEDICAL / "jobs" / "client_dp.toml", ["privacy.client_dp.mode='central'"])
    c = Coordinator(make_site(tmp_path), tmp_path / "state")
    table = {**job("client_dp").spec.table}
    table["privacy"] = {**table["privacy"], "client_dp": {**table["privacy"]["client_dp"], "mode": "central"}}
    answer = c.admit(crafted(table))
    assert not answer["accepted"] and "mode = 'central' is refused" in answer["reason"]
    policy = (
        DEFAULT_POLICY
        + '[privacy.client_dp]\nmode = "central"\nclipping_norm = 1.0\nnoise_multiplier = 2.0\n'
    )
    with pytest.raises(ConfigError, match="mode = 'central' is refused"):
        load_site(make_site(tmp_path / "p", policy))


# --- 4. distributed client-level DP: secure aggregation, own share, site counts -------------------


def test_4_distributed_client_dp_needs_he(tmp_path: Path) -> None:
    c = Coordinator(make_site(tmp_path), tmp_path / "state")
    table = {**job("client_dp").spec.table}
    table["privacy"] = {k: v for k, v in table["privacy"].items() if k != "he"}
    answer = c.admit(crafted(table))
    assert not answer["accepted"] and "needs secure aggregation" in answer["reason"]


def test_4_the_charge_counts_only_the_sites_own_share(tmp_path: Path) -> None:
    c = Coordinator(make_site(tmp_path, DEFAULT_POLICY.replace("20.0", "200.0")), tmp_path / "state")
    z, rounds = 3.0, 3
    for k in (4, 16):  # a coordinator claiming more sites makes each share smaller: a larger charge
        req = job("client_dp", f"privacy.client_dp.noise_multiplier={z}", job_id=f"share-{k}", num_sites=k)
        plan = c.admit(req)["plan"]
        updates = next(r for r in plan["releases"] if r["what"] == "model updates")
        acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
        acc.compose(dp_accounting.GaussianDpEvent(z / math.sqrt(k)), rounds)
        assert updates["epsilon"] == pytest.approx(acc.get_epsilon(DELTA), rel=5e-3)
    assert epsilon([gaussian_event(noise_multiplier=z / 4, count=rounds)], delta=DELTA) > epsilon(
        [gaussian_event(noise_multiplier=z / 2, count=rounds)], delta=DELTA
    )


@pytest.mark.parametrize(
    ("num_sites", "sets", "reason"),
    [
        (4, ("job.min_sites=16",), "min_sites 16 exceeds the 4 sites"),
        (1, ("job.min_sites=1",), "jobs planned for >= 2 sites"),
        (4, ("job.min_sites=1",), "jobs planned for >= 2 sites"),
    ],
)
def test_4_site_counts_are_checked_against_the_sites_own_floor(
    tmp_path: Path, num_sites: int, sets: tuple[str, ...], reason: str
) -> None:
    c = Coordinator(make_site(tmp_path), tmp_path / "state")
    answer = c.admit(job("client_dp", *sets, num_sites=num_sites))
    assert not answer["accepted"] and reason in answer["reason"]


# --- 5. evaluation as an uncharged oracle ---------------------------------------------------------


def test_5_under_dp_evaluations_are_withheld_by_default_and_bounded_by_the_plan(tmp_path: Path) -> None:
    c = Coordinator(make_site(tmp_path), tmp_path / "state")
    req = job("dp", job_id="oracle")
    plan = c.admit(req)["plan"]
    assert any(r["what"] == "evaluation metrics" and r["count"] == 0 for r in plan["releases"])
    rng = np.random.default_rng(0)
    answered = []
    for r in range(1, 61):  # the review used 5,000 crafted models; past round 3 each is refused alike
        crafted_model = tuple(rng.normal(size=a.shape) for a in c.model(req))
        with contextlib.suppress(PolicyError):
            answered.append(c.evaluate(req, r, crafted_model))
    assert len(answered) == 3 and all(a == {"withheld": 1.0} for a in answered)
    assert _audit_kinds(c).count("refuse") == 57 and _ledger(c).summary().charges[0].job_id == "oracle"


def test_5_dp_evaluations_are_noised_and_charged(tmp_path: Path) -> None:
    policy = DEFAULT_POLICY + 'evaluation = "dp"\nevaluation_epsilon = 2.0\n'
    c = Coordinator(make_site(tmp_path, policy), tmp_path / "state")
    req = job("dp", "privacy.dpsgd.epsilon=4.0", job_id="noisy-eval")  # a total the evaluations fit in
    plan = c.admit(req)["plan"]
    evaluation = next(r for r in plan["releases"] if r["what"] == "evaluation metrics")
    assert evaluation["count"] == 3 and evaluation["epsilon"] == pytest.approx(2.0, rel=0.02)
    g = c.model(req)
    first, second = c.evaluate(req, 1, g), c.evaluate(req, 2, g)
    assert first["accuracy"] != second["accuracy"] and first["dp_noise_std"] > 0
    assert set(first) == {"accuracy", "loss", "dp_noise_std"}  # no AUC, no test-set size
    charges = _ledger(c).summary().charges
    assert len(charges) == 2  # one per answer: the first also pays the noisy size
    planned = c.site.plan(req)
    answers = [planned.size.event, *planned.per_answer["evaluate"] * 2]
    charged = _ledger(c).job_charge("noisy-eval")
    assert charged is not None and charged[0] == pytest.approx(epsilon(answers, delta=DELTA), rel=5e-3)
    assert plan["epsilon"] > 2.0 and charged[0] < plan["epsilon"] - 0.4  # what was not answered cost nothing


def test_5_clear_evaluations_under_dp_only_where_the_site_says_so_and_reported(tmp_path: Path) -> None:
    c = Coordinator(make_site(tmp_path, DEFAULT_POLICY + 'evaluation = "clear"\n'), tmp_path / "state")
    plan = c.admit(job("dp", job_id="clear"))["plan"]
    evaluation = next(r for r in plan["releases"] if r["what"] == "evaluation metrics")
    assert evaluation["epsilon"] is None and "site policy evaluation = 'clear'" in evaluation["protection"]


# --- 7. smaller findings -------------------------------------------------------------------------


def test_7_max_epsilon_per_job_caps_every_mechanism(tmp_path: Path) -> None:
    policy = DEFAULT_POLICY.replace("20.0", "100.0") + "max_epsilon_per_job = 8.0\n"
    c = Coordinator(make_site(tmp_path, policy), tmp_path / "state")
    answer = c.admit(job("client_dp", "privacy.client_dp.noise_multiplier=1.0", "job.rounds=15"))
    assert not answer["accepted"] and "> max_epsilon_per_job 8" in answer["reason"]
    c2 = Coordinator(make_site(tmp_path / "b", policy + 'evaluation = "dp"\n'), tmp_path / "state-b")
    answer = c2.admit(job("dp", "privacy.dpsgd.epsilon=20"))  # above the cap, plus DP evaluations
    assert answer["accepted"] and 8.0 * (1 - 2e-3) <= answer["plan"]["epsilon"] <= 8.0  # the cap is the total
    assert any(r["what"] == "evaluation metrics" and r["epsilon"] for r in answer["plan"]["releases"])
    assert _ledger(c).summary().charges == () and _ledger(c2).summary().charges == ()


def test_7_a_deleted_ledger_fails_closed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = make_site(tmp_path)
    c = Coordinator(site, tmp_path / "state")
    req = job("dp", job_id="spent")
    c.admit(req)
    c.train(req, 1, c.model(req))
    ledger_path = _ledger(c).path
    ledger_path.unlink()
    with pytest.raises(LedgerError, match="fails closed"):
        SiteRuntime(load_site(site), tmp_path / "state")
    args = [
        "node",
        "--site",
        str(site),
        "--superlink",
        "127.0.0.1:1",
        "--insecure",
        "--state-dir",
        str(tmp_path / "state"),
    ]
    assert main(args) == 2
    assert "no privacy ledger" in capsys.readouterr().err and not ledger_path.exists()


def _tamper(path: Path, *sql: str) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DROP TRIGGER IF EXISTS records_no_delete")
        for statement in sql:
            conn.execute(statement)
    conn.close()


def test_7_a_truncated_or_replaced_audit_log_is_detected(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    c = Coordinator(site, tmp_path / "state")
    req = job("dp", job_id="audited")
    c.admit(req)
    c.train(req, 1, c.model(req))
    audit_path = c.site.guard.audit.path
    last = AuditLog(audit_path).head()
    # truncation: the last record removed and the head rewound, a consistent chain again
    _tamper(audit_path, f"DELETE FROM records WHERE seq = {last[0]}")
    prev = AuditLog(audit_path).records()[-1]
    _tamper(audit_path, f"UPDATE head SET seq = {prev.seq}, hash = '{prev.hash}'")
    assert AuditLog(audit_path).verify().ok  # the log alone looks fine ...
    with pytest.raises(AuditError, match="truncated or replaced"):
        SiteRuntime(load_site(site), tmp_path / "state")  # ... the ledger's anchor does not
    # replacement: a whole new, valid chain
    audit_path.unlink()
    AuditLog.create(audit_path).append(
        actor="x", kind="job", job_id="j", released="r", epsilon=0.0, delta=0.0
    )
    with pytest.raises(AuditError, match="truncated or replaced"):
        SiteRuntime(load_site(site), tmp_path / "state")


def test_7_an_external_head_detects_a_rewrite_of_both_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = make_site(tmp_path)
    c = Coordinator(site, tmp_path / "state")
    req = job("dp", job_id="external")
    c.admit(req)
    head = c.site.guard.audit.head()
    state = ["--state-dir", str(tmp_path / "state")]
    assert main(["audit", "verify", str(site), *state, "--head", f"{head[0]}:{head[1]}"]) == 0
    c.train(req, 1, c.model(req))  # the log moves on; an old head no longer matches
    assert main(["audit", "verify", str(site), *state, "--head", f"{head[0]}:{head[1]}"]) == 2
    assert "externally kept head" in capsys.readouterr().err


def test_7_standardisation_under_dp_needs_public_constants(tmp_path: Path) -> None:
    undeclared = (
        'age = { type = "numeric", center = 55.0, scale = 10.0, tag = "quasi_identifier", '
        'bounds = [18, 100] } => age = "numeric"'
    )
    c = Coordinator(make_site(tmp_path, schema=undeclared), tmp_path / "state")
    answer = c.admit(job("dp"))
    assert not answer["accepted"] and "declare no public center/scale: age" in answer["reason"]
    assert c.admit(job("default", job_id="plain"))["accepted"]  # without DP the site may fit them


def test_7_dataset_size_is_released_with_noise_once_or_declared_public(tmp_path: Path) -> None:
    policy = DEFAULT_POLICY + "dataset_size_noise = 20.0\n"
    c = Coordinator(make_site(tmp_path, policy), tmp_path / "state")
    n = len(c.site.data.y_train)
    first, second = job("dp", job_id="size-1"), job("dp", job_id="size-2")
    plans = [c.admit(r)["plan"] for r in (first, second)]
    size = [next(r for r in p["releases"] if r["what"] == "training-set size") for p in plans]
    assert size[0]["epsilon"] == pytest.approx(epsilon([gaussian_event(noise_multiplier=20.0)], delta=DELTA))
    _, metrics = c.train(first, 1, c.model(first))
    kept = c.site.guard.plans.released_value("heart_disease", f"train_size:{n}")
    assert kept is not None and metrics["num-examples"] == kept[0] and kept[2]  # charged with job 1
    _, again = c.train(second, 1, c.model(second))
    assert again["num-examples"] == kept[0]  # reused: no second, independent draw to average out
    charges = _ledger(c).summary().charges
    assert [ch.job_id for ch in charges] == ["size-1", "size-2"]
    assert "GaussianDpEvent(noise_multiplier=20.0)" in str(event_from_json(charges[0].event_json))
    assert "noise_multiplier=20.0" not in str(event_from_json(charges[1].event_json))  # charged once
    public = Coordinator(
        make_site(tmp_path / "pub", DEFAULT_POLICY + 'dataset_size = "public"\n'), tmp_path / "s2"
    )
    plan = public.admit(job("dp", job_id="size-public"))["plan"]
    released = next(r for r in plan["releases"] if r["what"] == "training-set size")
    assert released["epsilon"] is None and "uncharged" in released["protection"]


def test_7_a_noisy_size_below_one_batch_is_planned_at_sampling_rate_one(tmp_path: Path) -> None:
    """A small site's released size can fall below the batch size (30 rows, noise std 10: about 1 in
    500 draws gives 1); it is kept for good, so refusing would lock the site out of DP-SGD forever."""
    c = Coordinator(make_site(tmp_path), tmp_path / "state")
    n = len(c.site.data.y_train)
    c.site.guard.plans.keep_value(
        "heart_disease", f"train_size:{n}", 1.0, gaussian_event(noise_multiplier=10.0)
    )
    answer = c.admit(job("dp", job_id="tiny"))
    assert answer["accepted"], answer["reason"]
    size = next(r for r in answer["plan"]["releases"] if r["what"] == "training-set size")
    assert "planned as 4 (sampling rate 1)" in size["protection"]
    assert c.site.plan(job("dp", job_id="tiny")).mechanisms[0].public["sample_rate"] == 1.0


def test_7_site_state_is_private(tmp_path: Path) -> None:
    c = Coordinator(make_site(tmp_path), tmp_path / "state")
    paths = c.site.guard.paths
    assert paths.folder.stat().st_mode & 0o777 == 0o700
    for f in (paths.ledger, paths.audit):
        assert f.stat().st_mode & 0o777 == 0o600


# --- two-phase admission ---------------------------------------------------------------------------


def test_a_job_that_releases_nothing_costs_nothing(tmp_path: Path) -> None:
    policy = DEFAULT_POLICY.replace(
        "20.0", "1.1"
    )  # one dp job (1 and the size: 1.04) fits, two (1.25) do not
    c = Coordinator(make_site(tmp_path, policy), tmp_path / "state")
    first, second = job("dp", job_id="held"), job("dp", job_id="waiting")
    assert c.admit(first)["accepted"]
    answer = c.admit(second)  # the first job's reservation holds the budget
    assert not answer["accepted"] and "refused, nothing was run" in answer["reason"]
    assert c.cancel("held") == "cancelled"  # the first job stopped before any release
    assert _ledger(c).summary().charges == ()
    assert c.admit(job("dp", job_id="next"))["accepted"]
    with pytest.raises(PolicyError, match="was cancelled"):
        c.train(first, 1, c.model(first))


def test_4_a_sum_of_one_update_is_not_decrypted(tmp_path: Path) -> None:
    """Under HE with one shared key, a "sum" holding one site's ciphertext would let the site read it."""
    from flwr.app import MessageType

    from fedcore.flower.serde import arrays_to_record, opaque_from_record, opaque_to_record
    from fedcore.he import EncryptedUpdate
    from fedcore.he.keys import generate_keyset, save_secret

    c = Coordinator(make_site(tmp_path), tmp_path / "state")
    save_secret(generate_keyset(), c.site.guard.paths.he_secret_key)
    req = job("he", job_id="he-one")
    assert c.admit(req)["accepted"]
    first = c.send(
        MessageType.TRAIN,
        {"job": req.to_wire(), "server-round": 1, "he-round": 0},
        arrays_to_record(c.model(req)),
    )
    ciphertext = opaque_from_record(first.content.array_records["arrays"])
    assert EncryptedUpdate.from_bytes(ciphertext).num_sites == 1
    claim = train_claim(req, 1, ["cleveland"], ciphertext)
    with pytest.raises(PolicyError, match="holds 1 sites' answers; site 'cleveland' opens only sums of 4"):
        c.send(
            MessageType.TRAIN,
            {"job": req.to_wire(), "server-round": 2, "he-round": 1, **he_claim(claim, {})},
            opaque_to_record(ciphertext),
        )
    assert c.site.guard.audit.records()[-1].kind == "refuse"  # refused before any charge, audited
    assert not c.site.guard.plans.answered(req.job_id, "train", 2)
