"""The coordinator under ``flwr run``: the job settings it records, the one-command resume
(``resume='OUT'`` alone), refusals of a resume that asks for another job, and the line it prints
when it stops (docs/deployment.md, step 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcore.errors import ConfigError
from fedcore.flower.deployment import RUN_SETTINGS, continue_command, deployment_settings, stop_line

APP = Path(__file__).resolve().parents[2] / "examples" / "medical"


def _defaults() -> dict[str, str]:
    return {"job": "jobs/default.toml", "sites": "sites/a.toml,sites/b.toml", "set": "", "out-dir": "",
            "resume": ""}  # fmt: skip


def test_a_job_records_its_settings_and_resume_needs_only_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = deployment_settings(APP, {**_defaults(), "job": "jobs/dp.toml", "out-dir": str(out),
                                      "set": "job.rounds=3;job.min_sites=3"})  # fmt: skip
    assert json.loads((out / RUN_SETTINGS).read_text()) == {
        "job": "jobs/dp.toml",
        "set": "job.rounds=3;job.min_sites=3",
    }
    again = deployment_settings(APP, {**_defaults(), "resume": str(out)})  # what the guide documents
    assert again.job_file == first.job_file == APP / "jobs" / "dp.toml"
    assert list(again.overrides) == list(first.overrides) == ["job.rounds=3", "job.min_sites=3"]
    assert again.resume == again.out_dir == out
    assert json.loads((out / RUN_SETTINGS).read_text())["job"] == "jobs/dp.toml"  # not rewritten


def test_a_resume_asking_for_another_job_is_refused_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    deployment_settings(APP, {**_defaults(), "job": "jobs/dp.toml", "out-dir": str(out)})
    with pytest.raises(ConfigError, match=r"set='job.rounds=9' \(recorded: ''\).*new out-dir"):
        deployment_settings(APP, {**_defaults(), "resume": str(out), "set": "job.rounds=9"})
    with pytest.raises(ConfigError, match=r"job='jobs/he.toml' \(recorded: 'jobs/dp.toml'\)"):
        deployment_settings(APP, {**_defaults(), "resume": str(out), "job": "jobs/he.toml"})
    same = deployment_settings(APP, {**_defaults(), "resume": str(out), "job": "jobs/dp.toml"})
    assert same.job_file.name == "dp.toml"  # repeating the recorded value is fine


def test_the_stop_line_names_the_command_or_says_nothing_can_continue(tmp_path: Path) -> None:
    assert (
        continue_command(tmp_path)
        == f"flwr run APP_DIR CONNECTION --stream --run-config \"resume='{tmp_path}'\""
    )
    line = stop_line(tmp_path)
    assert line.startswith("fedcore: the job stopped before a round was checkpointed")
    refused = stop_line(tmp_path, why=ValueError("job dp-1 refused, nothing was run:\n  va: budget"))
    assert "(job dp-1 refused, nothing was run: va: budget); run it again" in refused
