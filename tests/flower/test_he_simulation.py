"""The four hospitals under HE: same accuracy as plaintext; the coordinator can read nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcore.config import load_job
from fedcore.errors import KeyMismatchError
from fedcore.harness.runner import run_app
from fedcore.he import EncryptedUpdate, decrypt_mean
from fedcore.he.keys import load_public_context, load_secret_context
from tests.fl_loop import run_loop

pytestmark = pytest.mark.he

APP = Path(__file__).resolve().parents[2] / "examples" / "medical"
SITES = [APP / "sites" / f"{n}.toml" for n in ("cleveland", "hungary", "switzerland", "va")]


@pytest.fixture(scope="module")
def he_run(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("he")
    return out, run_app(APP, job="he", out_dir=out, rounds=5, seed=7, baselines=False)


def test_he_accuracy_equals_plaintext(he_run: tuple[Path, dict[str, Any]]) -> None:
    _, summary = he_run
    plain = run_loop(load_job(APP / "jobs" / "he.toml", ["job.rounds=5"]), SITES, seed=7)
    assert summary["mean_site_accuracy"] == pytest.approx(plain, abs=0.005)
    assert summary["privacy"]["he"] is True
    assert "every site's model update" in summary["privacy"]["encrypted"]
    assert summary["privacy"]["he_upload_bytes_per_site_round"] > 0


def test_coordinator_holds_no_secret_and_cannot_decrypt(he_run: tuple[Path, dict[str, Any]]) -> None:
    out, _ = he_run
    last_sum = EncryptedUpdate.from_bytes((out / "last_sum.he").read_bytes())
    public = load_public_context(out / "coordinator" / "public.ctx")
    with pytest.raises((KeyMismatchError, TypeError)):
        decrypt_mean(public, last_sum)  # type: ignore[arg-type]
    assert not public.tenseal.is_private()
    # each site's secret key lives in that site's own private folder, never in the coordinator's
    secrets = sorted(out.rglob("*secret*"))
    assert secrets == [out / "sites" / s.stem / "he_secret.ctx" for s in sorted(SITES)]
    assert all(
        p.stat().st_mode & 0o777 == 0o600 and p.parent.stat().st_mode & 0o777 == 0o700 for p in secrets
    )
    secret = load_secret_context(secrets[0])
    key_bytes = secret.tenseal.serialize(save_secret_key=True)
    public_bytes = (out / "coordinator" / "public.ctx").read_bytes()
    assert len(public_bytes) < len(key_bytes)
    coordinator_files = [out / "last_sum.he", out / "metrics.json", out / "coordinator" / "public.ctx"]
    probe = key_bytes[-64:]  # a slice of the secret key material
    for f in coordinator_files:
        assert probe not in f.read_bytes(), f"secret key bytes found in {f.name}"
    # the sum decrypts for a site, and the sites all hold the same final model
    assert decrypt_mean(secret, last_sum)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["rounds"]) == 5
    models = [np.load(out / "sites" / s.stem / "model.npz") for s in SITES]
    for m in models[1:]:
        for k in m.files:
            np.testing.assert_array_equal(m[k], models[0][k])  # every site computed the same model


@pytest.mark.slow
def test_site_with_another_key_set_is_named_and_refused(tmp_path: Path, shared_data: Path) -> None:
    """A site holding the secret key of another ceremony: the coordinator names it, nothing is summed."""
    import shutil

    from fedcore.errors import UpdateError
    from fedcore.he.keys import init_keys

    ours, theirs = init_keys(tmp_path / "ours"), init_keys(tmp_path / "theirs")
    app = tmp_path / "medical"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    for s in SITES:
        f = app / "sites" / s.name
        key = tmp_path / ("theirs" if s.stem == "va" else "ours") / "secret.ctx"
        text = f.read_text().replace("../../../../shared", str(APP.parents[2] / "shared"))
        f.write_text(text.replace("[privacy]", f'[privacy]\nhe_secret_key = "{key}"'))
    job = app / "jobs" / "he.toml"
    job.write_text(
        job.read_text().replace(
            '# public_key = "../keys/public.ctx"', f'public_key = "{tmp_path / "ours" / "public.ctx"}"'
        )
    )
    with pytest.raises(UpdateError, match=rf"site 'va' encrypted with key set {theirs}.*holds {ours}"):
        run_app(app, job="he", out_dir=tmp_path / "run", rounds=1, baselines=False)


@pytest.mark.slow
@pytest.mark.long
def test_ten_million_parameter_update_goes_through_flower_under_he(tmp_path: Path, shared_data: Path) -> None:
    """A 10.0M-parameter MLP: each site's ciphertext (~138 MB) travels as one chunked opaque Array."""
    sets = ['model.name="mlp"', "model.hidden=[3200,3125]", "train.local_steps=2"]
    summary = run_app(APP, job="he", out_dir=tmp_path, rounds=1, sets=sets, baselines=False)
    params = 13 * 3200 + 3200 + 3200 * 3125 + 3125 + 3125 + 1
    assert params >= 10_000_000
    assert summary["privacy"]["he_upload_bytes_per_site_round"] <= 4 * 4 * params  # at most 4x float32
    assert 0 <= summary["mean_site_accuracy"] <= 1


def test_a_site_receives_each_sum_once_as_the_estimate_counts(he_run: tuple[Path, dict[str, Any]]) -> None:
    """The bytes the coordinator sent each site: the initial model, then one encrypted sum per round
    (with the evaluate; the next train names it by digest), which is what `fedcore estimate` counts."""
    from fedcore.cli.estimate import estimate_job, model_size

    out, _ = he_run
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    size, sites = model_size(APP / "jobs" / "he.toml")
    est = estimate_job(APP / "jobs" / "he.toml")
    names = {s.stem for s in SITES}
    for r in rounds:
        sum_bytes = int(r["aggregate"]["he_sum_bytes"])
        assert sum_bytes == pytest.approx(est["sum_bytes"], rel=0.02)
        assert set(r["sent_bytes"]) == names
        for sent in r["sent_bytes"].values():
            initial = sent - sum_bytes  # round 1: the float32 model (and its array headers); then none
            assert 4 * size <= initial <= 4 * size + 256 * 8 if r["round"] == 1 else initial == 0
    whole = sum(r["sent_bytes"]["cleveland"] for r in rounds)
    assert whole * sites == pytest.approx(
        sites * (len(rounds) * est["sum_bytes"] + 4 * size), rel=0.02
    )  # est["download_bytes_whole_job"] for this job's rounds
