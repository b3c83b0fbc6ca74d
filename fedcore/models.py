"""Model builders by name (an explicit registry) and helpers between torch and numpy.

torch is imported when a model is built, not with this module: reading a job file checks the model's
name and options here, and ``fedcore run`` refuses a bad job before torch loads (seconds).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcore.aggregators.base import Arrays
from fedcore.plugins import Registry

if TYPE_CHECKING:
    from torch import nn

__all__ = ["build_model", "get_arrays", "model_builder", "model_names", "register_model", "set_arrays"]


def _logreg(input_dim: int, *, output_dim: int = 1) -> nn.Module:
    from torch import nn

    return nn.Linear(input_dim, output_dim)


def _mlp(input_dim: int, *, hidden: Sequence[int] = (32, 16), output_dim: int = 1) -> nn.Module:
    if isinstance(hidden, str | bytes) or not all(isinstance(h, int) and h >= 1 for h in hidden):
        raise ValueError(f"hidden must be a list of layer widths >= 1, e.g. [32, 16], got {hidden!r}")
    from torch import nn

    layers: list[nn.Module] = []
    width = input_dim
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU()]
        width = int(h)
    layers.append(nn.Linear(width, output_dim))
    return nn.Sequential(*layers)


_MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
_MODELS.register("logreg", _logreg)
_MODELS.register("mlp", _mlp)


def register_model(name: str, builder: Callable[..., nn.Module], *, force: bool = False) -> None:
    """Register ``builder(input_dim, **options) -> nn.Module`` under ``name``: one output, or, for a
    task with several (``multiclass``), a builder with an ``output_dim`` keyword (the job passes it)."""
    _MODELS.register(name, builder, force=force)


def model_names() -> list[str]:
    return _MODELS.names()


def model_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name`` (``UnknownNameError`` if none)."""
    return _MODELS.get(name)


def build_model(spec: Mapping[str, Any], input_dim: int, *, seed: int) -> nn.Module:
    """Build the model named by ``spec["name"]`` with deterministic initial weights."""
    import torch

    builder = model_builder(str(spec.get("name", "logreg")))
    options = {k: v for k, v in spec.items() if k != "name"}
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only, as fork_rng restores: torch.manual_seed would also seed (lazily, with a
        # stack trace each) every accelerator backend, ~1 ms per model on a site's every message
        torch.default_generator.manual_seed(seed)
        return builder(input_dim, **options)


def get_arrays(model: nn.Module) -> Arrays:
    """The model's parameters as float64 numpy arrays, in ``state_dict`` order."""
    return tuple(t.detach().cpu().numpy().astype(np.float64) for t in model.state_dict().values())


def set_arrays(model: nn.Module, arrays: Arrays) -> None:
    """Load ``arrays`` (as from ``get_arrays``) into ``model`` in place."""
    import torch

    keys = list(model.state_dict())
    if len(keys) != len(arrays):
        raise ValueError(f"model has {len(keys)} tensors, got {len(arrays)} arrays")
    state = {
        k: torch.as_tensor(np.asarray(a), dtype=torch.float32) for k, a in zip(keys, arrays, strict=True)
    }
    model.load_state_dict(state)
