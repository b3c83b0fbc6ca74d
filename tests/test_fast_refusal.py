"""``fedcore run`` refuses a bad site file, job file or data file before torch, Ray or Flower load (they
cost seconds each): checked by what the refusing process imported, not by a wall clock."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedcore.appinit import init_app

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "flwr", "dp_accounting", "sklearn", "opacus", "tenseal")
PROBE = (
    "import sys\nfrom fedcore.cli.main import main\nrc = main(['run', sys.argv[1], '--out', sys.argv[2]])\n"
    "print('LOADED', rc, [m for m in {heavy!r} if m in sys.modules])\n"
)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    data = (shared_data / "heart_disease" / "processed.cleveland.data").read_text()
    csv = tmp_path_factory.mktemp("csv") / "heart.csv"
    csv.write_text("age,sex,cp,trestbps,chol,fbs,restecg,thalach,exang,oldpeak,slope,ca,thal,num\n" + data)
    out = tmp_path_factory.mktemp("apps") / "heart"
    init_app(csv, out, label="num", positive_above=0)
    return out


def _broken(app: Path, tmp_path: Path, rel: str, old: str, new: str) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(app, bad)
    path = bad / rel
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return bad


@pytest.mark.parametrize(
    ("rel", "old", "new", "said"),
    [
        ("sites/site_0.toml", "budget_epsilon", "budget_epsilo", "did you mean 'budget_epsilon'?"),
        ("jobs/default.toml", "local_steps", "local_step", "did you mean 'local_steps'?"),
        ("data/site_1.csv", "\n", "\n1,2,3\n", "has 3 fields"),
    ],
)
def test_a_bad_file_is_refused_before_torch_ray_and_flower_load(
    app: Path, tmp_path: Path, rel: str, old: str, new: str, said: str
) -> None:
    bad = _broken(app, tmp_path, rel, old, new)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    probe = PROBE.format(heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", probe, str(bad), str(tmp_path / "run")], env=env,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert "LOADED 2 []" in done.stdout, done.stdout + done.stderr
    assert said in done.stderr and "Traceback" not in done.stderr, done.stderr
