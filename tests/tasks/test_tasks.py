"""Tasks as plug-ins: the losses and metrics against naive oracles, each task trained end to end
through the site runtimes, and what a site refuses (another task than its labels, DP-SGD on the Cox
loss but not on the Weibull one, a DP evaluation a task has not)."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fedcore.clients.evaluation import evaluate_site
from fedcore.config import TrainConfig, load_site, parse_job
from fedcore.data import prepare_site
from fedcore.errors import ConfigError, PolicyError, PrivacyError, SchemaError
from fedcore.harness.loop import run_inprocess
from fedcore.metrics import concordance_index
from fedcore.models import build_model, set_arrays
from fedcore.privacy.ghost import ghost_clipped_sum
from fedcore.tasks import Binary, Regression, Survival, cox_loss, register_task, task_names, weibull_losses

# --- oracles -------------------------------------------------------------------------------------


def _naive_cox(risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> float:
    """Breslow: every row with time >= an event's time is in its risk set; summed, divided by n."""
    total = 0.0
    for i in range(len(risk)):
        if event[i]:
            at_risk = [j for j in range(len(risk)) if time[j] >= time[i]]
            total += np.log(np.sum(np.exp(risk[at_risk]))) - risk[i]
    return total / len(risk)


def _naive_c_index(time: np.ndarray, risk: np.ndarray, event: np.ndarray) -> float:
    """lifelines' ``_naive_concordance_summary_statistics`` rules, on predicted times ``-risk``."""
    pred = -risk
    pairs = correct = tied = 0.0
    for a, b in itertools.combinations(range(len(time)), 2):
        ta, tb, ea, eb = time[a], time[b], event[a], event[b]
        same_time_one_event = ta == tb and ea != eb
        if not (same_time_one_event or (ta != tb and ((ea and eb) or (ea and ta < tb) or (eb and tb < ta)))):
            continue
        pairs += 1
        if pred[a] == pred[b]:
            tied += 1
        elif pred[a] < pred[b]:
            correct += (ta < tb) or (ta == tb and ea and not eb)
        else:
            correct += (ta > tb) or (ta == tb and not ea and eb)
    return (correct + tied / 2) / pairs


def test_cox_loss_matches_the_naive_breslow_sum_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 30))
        risk = rng.normal(size=n)
        time = rng.integers(1, 8, size=n).astype(float)  # many ties
        event = rng.integers(0, 2, size=n).astype(float)
        got = float(cox_loss(torch.tensor(risk), torch.tensor(time), torch.tensor(event)))
        assert got == pytest.approx(_naive_cox(risk, time, event), rel=1e-10, abs=1e-12)


def test_cox_loss_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(1)
    risk = torch.tensor(rng.normal(size=12), requires_grad=True)
    time, event = torch.tensor(rng.integers(1, 5, size=12).astype(float)), torch.tensor([1.0, 0.0] * 6)
    cox_loss(risk, time, event).backward()  # type: ignore[no-untyped-call]
    assert risk.grad is not None
    h = 1e-6
    for i in range(12):
        up, down = risk.detach().clone(), risk.detach().clone()
        up[i] += h
        down[i] -= h
        numeric = (float(cox_loss(up, time, event)) - float(cox_loss(down, time, event))) / (2 * h)
        assert float(risk.grad[i]) == pytest.approx(numeric, abs=1e-6)


@pytest.mark.parametrize("shape", [0.5, 1.0, 2.0])
def test_weibull_losses_equal_scipys_weibull_log_likelihood(shape: float) -> None:
    """Weibull PH with hazard k t^(k-1) exp(eta) is scipy's weibull_min(k, scale exp(-eta / k)): an
    event scores -logpdf, a censored row -logsf (a censored row at time 0: 0; k = 1, an event at 0:
    -eta)."""
    from scipy.stats import weibull_min

    rng = np.random.default_rng(5)
    risk, days = rng.normal(size=40), rng.uniform(1.0, 3000.0, size=40)
    days[:3] = 0.0
    event = (rng.random(40) < 0.4).astype(float)
    event[:3] = 0.0
    if shape == 1.0:  # the exponential: an event at time 0 has a finite likelihood too
        event[0] = 1.0
    t, scale = days / 365.25, np.exp(-risk / shape)
    expected = np.where(
        event == 1, -weibull_min.logpdf(t, shape, scale=scale), -weibull_min.logsf(t, shape, scale=scale)
    )
    task = Survival(likelihood="weibull", shape=shape, time_scale=365.25)
    y = torch.tensor(np.stack([days, event], axis=1))
    got = task.example_losses(torch.tensor(risk).unsqueeze(-1), y)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-12)
    assert float(task.loss(torch.tensor(risk).unsqueeze(-1), y)) == pytest.approx(expected.mean(), rel=1e-9)
    direct = weibull_losses(torch.tensor(risk), torch.tensor(t), torch.tensor(event), shape=shape)
    np.testing.assert_allclose(direct.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_weibull_dp_clipped_sums_match_a_naive_per_patient_loop() -> None:
    """The DP-SGD path of a linear survival model (the ghost backend: ``train_steps_dp`` picks it for a
    loss other than BCE; and Opacus') against each patient's own autograd gradient, clipped, summed."""
    from fedcore.privacy.dpsgd import choose_backend
    from fedcore.privacy.grad_sample import OpacusClipper, closed_form

    task = Survival(likelihood="weibull", shape=1.5, time_scale=100.0)
    rng = np.random.default_rng(6)
    model = torch.nn.Linear(5, 1)
    cfg = TrainConfig(lr=0.1, task=task)
    assert choose_backend(model) == "linear" and not closed_form(cfg)  # so DP-SGD runs "ghost"
    x = torch.tensor(rng.normal(size=(12, 5)), dtype=torch.float32)
    y = torch.tensor(np.stack([rng.uniform(1, 300, 12), rng.integers(0, 2, 12)], axis=1), dtype=torch.float32)
    per: list[list[torch.Tensor]] = []
    for i in range(12):
        model.zero_grad()
        task.example_losses(model(x[i : i + 1]), y[i : i + 1]).sum().backward()
        per.append([p.grad.detach().clone() for p in model.parameters() if p.grad is not None])
    norms = [float(torch.sqrt(sum((g**2).sum() for g in grads))) for grads in per]
    clip = float(np.median(norms))  # half the patients are clipped
    expected = [
        sum(g[k] * min(1.0, clip / (n + 1e-6)) for g, n in zip(per, norms, strict=True)) for k in range(2)
    ]
    got = ghost_clipped_sum(model, x, y, cfg, clip)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    clipper = OpacusClipper(model, "hooks", clip, 12)  # the "opacus-hooks" backend, the same sums
    try:
        for a, b in zip(clipper(x, y, cfg), expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    finally:
        clipper.close()


def test_survival_options_are_strict() -> None:
    assert not Survival().per_example and Survival(likelihood="weibull").per_example
    with pytest.raises(ConfigError, match="likelihood must be one of 'cox', 'weibull', got 'weibul'"):
        _job({"name": "survival", "likelihood": "weibul"})
    with pytest.raises(ConfigError, match='shape is the Weibull likelihood\'s; set likelihood = "weibull"'):
        _job({"name": "survival", "shape": 2.0})
    with pytest.raises(
        ConfigError, match="shape must be a number > 0, got 0; time_scale must be a number > 0, got -1"
    ):
        _job({"name": "survival", "likelihood": "weibull", "shape": 0, "time_scale": -1})
    with pytest.raises(ConfigError, match="no option 'scale'"):
        _job({"name": "survival", "likelihood": "weibull", "scale": 2.0})
    assert _job({"name": "survival", "likelihood": "weibull", "shape": 2}).train.task == Survival(
        likelihood="weibull", shape=2.0
    )


def test_concordance_index_matches_lifelines_naive_rules_with_ties() -> None:
    rng = np.random.default_rng(2)
    for _ in range(30):
        n = int(rng.integers(3, 25))
        time = rng.integers(1, 6, size=n).astype(float)
        risk = rng.integers(0, 4, size=n).astype(float)  # ties in the scores too
        event = rng.integers(0, 2, size=n).astype(float)
        event[0] = 1.0
        if len(set(time)) == 1:
            time[0] += 1
        expected = _naive_c_index(time, risk, event)
        assert concordance_index(time, risk, event) == pytest.approx(expected, abs=1e-12)
    t = np.array([1.0, 2.0, 3.0, 4.0])
    assert concordance_index(t, -t, np.ones(4)) == 1.0  # the earliest has the highest risk
    assert concordance_index(t, t, np.ones(4)) == 0.0


# --- synthetic sites ----------------------------------------------------------------------------

SITE = """
[site]
name = "{name}"
[data]
path = "{name}.csv"
[schema]
{schema}
[schema.columns]
a = {{ type = "numeric", center = 0.0, scale = 1.0 }}
b = {{ type = "numeric", center = 0.0, scale = 1.0 }}
{label_columns}
[split]
test_fraction = 0.3
seed = 1
[privacy]
budget_epsilon = 10.0
budget_delta = 1e-5
evaluation = "{evaluation}"
{privacy}
"""


def _sites(
    folder: Path,
    labels: Callable[[np.ndarray, np.random.Generator], dict[str, Any]],
    schema: str,
    label_columns: str,
    *,
    n: int = 240,
    evaluation: str = "withhold",
    privacy: str = "",
) -> list[Path]:
    """Two sites of ``n`` rows: inputs ``a``, ``b`` ~ N(0, 1), the label columns ``labels(x, rng)``."""
    out = []
    for k in range(2):
        rng = np.random.default_rng(10 + k)
        x = rng.normal(size=(n, 2))
        cols = {"a": x[:, 0], "b": x[:, 1], **labels(x, rng)}
        lines = [",".join(cols)] + [",".join(str(cols[c][i]) for c in cols) for i in range(n)]
        (folder / f"s{k}.csv").write_text("\n".join(lines) + "\n")
        text = SITE.format(
            name=f"s{k}", schema=schema, label_columns=label_columns, evaluation=evaluation, privacy=privacy
        )
        (folder / f"s{k}.toml").write_text(text)
        out.append(folder / f"s{k}.toml")
    return out


def _multiclass(x: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    names = np.array(["low", "mid", "high"])
    return {"grade": names[np.digitize(x[:, 0] + 0.3 * x[:, 1], [-0.5, 0.5])]}


def _regression(x: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    return {"y": 2.0 * x[:, 0] - x[:, 1] + 0.1 * rng.normal(size=len(x))}


def _survival(x: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    event_time = rng.exponential(1.0 / np.exp(1.5 * x[:, 0]))  # hazard exp(1.5 a): a is the risk
    censor = rng.exponential(2.0, size=len(x))
    return {"T": np.round(np.minimum(event_time, censor), 3), "E": (event_time <= censor).astype(int)}


MULTICLASS = (
    'target = "multiclass"\nlabel = "grade"',
    'grade = { type = "categorical", levels = ["low", "mid", "high"] }',
)
REGRESSION = ('target = "regression"\nlabel = "y"', 'y = "numeric"')
SURVIVAL = ('target = "survival"\nlabel = "T"\nevent = "E"', 'T = "numeric"\nE = "numeric"')


def _job(task: dict[str, Any], *, rounds: int = 8, lr: float = 0.1, **extra: Any) -> Any:
    table = {
        "job": {"rounds": rounds, "seed": 3, "min_sites": 2},
        "task": task,
        "model": {"name": "logreg"},
        "train": {"local_steps": 20, "batch_size": 16, "lr": lr},
        "aggregator": {"name": "fedavg"},
        **extra,
    }
    return parse_job(table, "test job")


def _train(job: Any, sites: list[Path]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as state:
        arrays, runtimes = run_inprocess(job, sites, seed=3, state_dir=Path(state))
    model = build_model(job.model.as_table(), 2, seed=0)
    set_arrays(model, arrays)
    scores = [evaluate_site(model, r.data, None, job.task) for r in runtimes]
    return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}


def test_multiclass_trains_to_well_above_chance(tmp_path: Path) -> None:
    sites = _sites(tmp_path, _multiclass, *MULTICLASS)
    job = _job({"name": "multiclass", "classes": 3})
    assert job.model.options == {"output_dim": 3}
    got = _train(job, sites)
    assert got["accuracy"] > 0.8 and got["balanced_accuracy"] > 0.75 and got["macro_auc"] > 0.9, got


def test_regression_trains_to_a_high_r2(tmp_path: Path) -> None:
    got = _train(_job({"name": "regression"}, lr=0.05), _sites(tmp_path, _regression, *REGRESSION))
    assert got["r2"] > 0.95 and got["mae"] < 0.2, got


def test_survival_trains_a_concordant_cox_model(tmp_path: Path) -> None:
    got = _train(_job({"name": "survival"}), _sites(tmp_path, _survival, *SURVIVAL))
    assert got["c_index"] > 0.7, got  # the hazard depends on `a` alone (true ranking ~0.75)


def test_a_site_refuses_a_job_whose_task_its_labels_do_not_serve(tmp_path: Path) -> None:
    sites = _sites(tmp_path, _multiclass, *MULTICLASS)
    with pytest.raises(PolicyError, match="declared for 'multiclass'"):
        _train(_job({"name": "binary"}), sites)
    with pytest.raises(PolicyError, match="4 classes but this site's label 'grade' declares 3 levels"):
        _train(_job({"name": "multiclass", "classes": 4}), sites)


def test_dp_sgd_is_refused_for_the_cox_loss_by_the_job_and_by_a_site(tmp_path: Path) -> None:
    dpsgd = {"epsilon": 1.0, "delta": 1e-5, "max_grad_norm": 1.0}
    with pytest.raises(ConfigError, match="not a sum over examples") as err:
        _job({"name": "survival"}, privacy={"dpsgd": dpsgd})
    assert '[task] likelihood = "weibull"' in str(err.value) and "\n" not in str(err.value).strip()
    # a site whose own policy demands DP-SGD refuses a survival job that did not ask for it
    policy = 'dataset_size = "public"\n[privacy.dpsgd]\nepsilon = 1.0\ndelta = 1e-5\nmax_grad_norm = 1.0'
    sites = _sites(tmp_path, _survival, *SURVIVAL, privacy=policy)
    with pytest.raises(PolicyError, match=r'not a sum over examples.*likelihood = "weibull"'):
        _train(_job({"name": "survival"}), sites)
    with pytest.raises(PrivacyError, match='set \\[task\\] likelihood = "weibull"'):
        Survival().example_losses(torch.zeros(3, 1), torch.ones(3, 2))


def test_dp_sgd_trains_a_weibull_survival_model_where_a_site_demands_it(tmp_path: Path) -> None:
    """The same sites admit the Weibull likelihood under their DP-SGD policy; the model ranks."""
    policy = 'dataset_size = "public"\n[privacy.dpsgd]\nepsilon = 4.0\ndelta = 1e-5\nmax_grad_norm = 1.0'
    sites = _sites(tmp_path, _survival, *SURVIVAL, privacy=policy)
    got = _train(_job({"name": "survival", "likelihood": "weibull"}, lr=0.05), sites)
    assert got["c_index"] > 0.65, got  # the true ranking scores ~0.75


def test_a_site_with_dp_evaluations_refuses_a_task_without_one(tmp_path: Path) -> None:
    dpsgd = {"epsilon": 2.0, "delta": 1e-5, "max_grad_norm": 1.0}
    sites = _sites(tmp_path, _regression, *REGRESSION, evaluation="dp", privacy='dataset_size = "public"')
    with pytest.raises(PolicyError, match='evaluation = "withhold" or "clear"'):
        _train(_job({"name": "regression"}, privacy={"dpsgd": dpsgd}), sites)


def test_dp_sgd_trains_a_multiclass_model_with_the_task_loss(tmp_path: Path) -> None:
    sites = _sites(tmp_path, _multiclass, *MULTICLASS, privacy='dataset_size = "public"')
    dpsgd = {"epsilon": 4.0, "delta": 1e-5, "max_grad_norm": 1.0}
    got = _train(_job({"name": "multiclass", "classes": 3}, privacy={"dpsgd": dpsgd}), sites)
    assert got["accuracy"] > 0.7, got


@pytest.mark.parametrize(
    ("task", "outputs", "make_y"),
    [
        (Regression(), 1, lambda rng, n: torch.tensor(rng.normal(size=n), dtype=torch.float32)),
        ("multiclass", 4, lambda rng, n: torch.tensor(rng.integers(0, 4, size=n), dtype=torch.float32)),
    ],
)
def test_ghost_clipped_sums_use_the_task_loss(task: Any, outputs: int, make_y: Callable[..., Any]) -> None:
    """Oracle: each example's own autograd gradient of the task's loss, clipped, summed."""
    from fedcore.tasks import MultiClass

    task = MultiClass(classes=4) if task == "multiclass" else task
    rng = np.random.default_rng(4)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, outputs))
    x, y = torch.tensor(rng.normal(size=(9, 5)), dtype=torch.float32), make_y(rng, 9)
    cfg = TrainConfig(lr=0.1, task=task)
    got = ghost_clipped_sum(model, x, y, cfg, 0.5)
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(9):
        model.zero_grad()
        task.example_losses(model(x[i : i + 1]), y[i : i + 1]).sum().backward()
        grads = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
        norm = float(torch.sqrt(sum((g**2).sum() for g in grads)))
        for e, g in zip(expected, grads, strict=True):
            e += g * min(1.0, 0.5 / (norm + 1e-6))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# --- configuration -------------------------------------------------------------------------------


def test_site_files_declare_their_labels_strictly(tmp_path: Path) -> None:
    sites = _sites(tmp_path, _survival, *SURVIVAL)
    text = sites[0].read_text()
    sites[0].write_text(text.replace('event = "E"\n', ""))
    with pytest.raises(ConfigError, match="needs the event column"):
        load_site(sites[0])
    sites[0].write_text(text.replace('target = "survival"', 'target = "survivl"'))
    with pytest.raises(ConfigError, match="did you mean 'survival'"):
        load_site(sites[0])
    regression = _sites(tmp_path, _regression, 'target = "multiclass"\nlabel = "y"', 'y = "numeric"')
    with pytest.raises(ConfigError, match="needs a categorical label"):
        load_site(regression[0])


def test_a_survival_site_refuses_rows_without_any_event(tmp_path: Path) -> None:
    sites = _sites(tmp_path, lambda x, rng: {"T": np.ones(len(x)), "E": np.zeros(len(x))}, *SURVIVAL)
    with pytest.raises(SchemaError, match="no row has an event"):
        prepare_site(load_site(sites[0]))


def test_the_binary_task_carries_pos_weight_and_refuses_it_elsewhere() -> None:
    assert TrainConfig(lr=0.1, pos_weight=3.0).task == Binary(pos_weight=3.0)
    with pytest.raises(ConfigError, match="pos_weight"):
        _job({"name": "regression"}, train={"local_steps": 1, "lr": 0.1, "pos_weight": 2.0})
    with pytest.raises(ConfigError, match="no option 'clases'"):
        _job({"name": "multiclass", "clases": 3})
    with pytest.raises(ConfigError, match="cost and card_precision score a binary task"):
        _job({"name": "regression"}, evaluate={"cost": {"fp": 1, "fn": 5}})


def test_a_task_in_one_small_file_as_the_readme_shows(tmp_path: Path) -> None:
    """fedcore/tasks/README.md: a Huber regression, registered, declared by a site, trained."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Huber(Regression):
        delta: float = 1.0
        name: ClassVar[str] = "huber"

        def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.huber_loss(outputs.squeeze(-1), y, delta=self.delta)

        def example_losses(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.huber_loss(outputs.squeeze(-1), y, delta=self.delta, reduction="none")

    register_task("huber", Huber, force=True)
    assert "huber" in task_names()
    sites = _sites(tmp_path, _regression, 'target = "huber"\nlabel = "y"', 'y = "numeric"')
    got = _train(_job({"name": "huber", "delta": 0.5}, lr=0.1), sites)
    assert got["r2"] > 0.9, got


def test_survival_metrics_on_a_known_ranking() -> None:
    y = np.array([[1.0, 1.0], [2.0, 1.0], [3.0, 0.0], [4.0, 1.0]], dtype=np.float32)
    got = Survival().metrics(np.array([3.0, 2.0, 1.0, 0.0]), y)
    assert got["c_index"] == 1.0 and got["n"] == 4.0 and set(got) == {"c_index", "loss", "n"}


def test_a_label_attack_is_refused_for_a_task_without_classes() -> None:
    """[attack] label_flip on a regression or survival job: one line before round 1, not a site's
    failure after its charge."""
    from fedcore.harness.attacks import check_attack

    attack = {"attack": {"name": "label_flip", "sites": ["a"]}}
    for task in ("regression", "survival"):
        with pytest.raises(ConfigError, match=f"the job's task '{task}' has none"):
            check_attack(_job({"name": task}, **attack), ["a", "b"], "test job")
    check_attack(_job({"name": "binary"}, **attack), ["a", "b"], "test job")  # a class label: allowed


def test_a_label_flip_on_a_multiclass_job_takes_the_jobs_class_count() -> None:
    """No ``num_classes`` by hand: the job's task says K, so a site whose labels lack the top class
    still flips ``y -> K - 1 - y`` (with K inferred from its labels it would flip to the wrong class)."""
    from fedcore.config.job import JobRequest
    from fedcore.harness.attacks import PoisonedLabels, check_attack

    job = _job({"name": "multiclass", "classes": 3}, attack={"name": "label_flip", "sites": ["a"]})
    check_attack(job, ["a", "b"], "test job")
    y = np.array([0, 1, 1, 0], dtype=np.float32)  # this site has no row of class 2
    flipped = PoisonedLabels().train_labels(JobRequest("flip", 2, job), "a", y)
    assert flipped.tolist() == [2.0, 1.0, 1.0, 2.0]
    assert PoisonedLabels().train_labels(JobRequest("flip", 2, job), "b", y).tolist() == y.tolist()
