"""Per-example clipped gradient sums for DP-SGD (the part of Abadi et al. 2016, Alg. 1 before noise).

``linear`` computes per-example gradient norms and clipped sums in closed form for models made only
of ``nn.Linear``/``nn.ReLU`` (one backward to the layer outputs; ``||g_i a_i^T||^2 = ||g_i||^2
||a_i||^2``, the ghost-norm identity of Goodfellow 2015 / Li et al. 2022, Sec. 4). ``OpacusClipper``
uses Opacus' ``GradSampleModule`` and ``DPOptimizer.clip_and_accumulate`` for any model Opacus supports.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import torch
from opacus.grad_sample import get_gsm_class
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.nn import functional as F

from fedcore.config.train import TrainConfig
from fedcore.errors import ConfigError
from fedcore.tasks import Binary

# opacus calls logging.basicConfig() when imported, so every log record of the process (Flower's, on a
# node or the coordinator) would print twice, once as "12/07/2026 02:35:39:DEBUG:...": undo that
for _handler in list(logging.getLogger().handlers):
    if getattr(_handler.formatter, "_fmt", None) == "%(asctime)s:%(levelname)s:%(message)s":
        logging.getLogger().removeHandler(_handler)

__all__ = [
    "OpacusClipper",
    "closed_form",
    "input_sq_norms",
    "is_logreg",
    "linear_clipped_sum",
    "linear_grad_sum",
    "linear_supported",
    "logreg_clipped_sum",
    "logreg_row_norms",
    "losses",
    "model_layers",
]

_STABILITY = 1e-6  # Opacus' clip factor C / (norm + 1e-6)


def linear_supported(model: nn.Module) -> bool:
    """Whether ``model`` is ``nn.Linear`` or an ``nn.Sequential`` of ``nn.Linear``/``nn.ReLU``, every
    parameter trained (a frozen one would enter the clipping norms: Opacus handles those models)."""
    layers = list(model) if isinstance(model, nn.Sequential) else [model]
    return (
        all(isinstance(m, nn.Linear | nn.ReLU) for m in layers)
        and isinstance(layers[-1], nn.Linear)
        and all_trained(model)
    )


def all_trained(model: nn.Module) -> bool:
    """Whether every parameter of ``model`` requires a gradient (no frozen layer)."""
    return all(p.requires_grad for p in model.parameters())


def model_layers(model: nn.Module) -> list[nn.Module]:
    return list(model) if isinstance(model, nn.Sequential) else [model]


def losses(logits: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """One loss per example, the task's (``cfg.task.example_losses``; binary: BCE with ``pos_weight``)."""
    return cfg.task.example_losses(logits, y)


def closed_form(cfg: TrainConfig) -> bool:
    """Whether the ``linear`` backend's closed form (the BCE-with-logits gradient) is ``cfg``'s loss."""
    return type(cfg.task) is Binary


def _linear_backprops(
    model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, cfg: TrainConfig, layers: Sequence[nn.Module]
) -> tuple[list[nn.Linear], list[torch.Tensor], list[torch.Tensor]]:
    """The Linear layers, their inputs ``a`` and the loss gradients ``g`` at their outputs (by hand).

    The BCE-with-logits gradient of example ``i`` w.r.t. its logit is ``l_i sigmoid(z_i) - pw y_i``
    with ``l_i = 1 + (pw - 1) y_i``, propagated back through the Linear/ReLU layers by hand
    (``g <- (g W) * [a > 0]``, ``a`` the next Linear's input: the output of the ReLUs in between, and
    ``relu(relu(z)) > 0`` iff ``z > 0``). ATen's ``threshold_backward``, the op autograd runs for
    ReLU, applies the mask in one pass with no boolean tensor (~0.4 ms of a ~2 ms MLP 256-256 step).
    """
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    inputs: list[torch.Tensor] = []
    gated: list[bool] = []  # whether a ReLU sits between Linear k - 1 and Linear k, by position
    h, relu = xb, False
    for layer in layers:
        if isinstance(layer, nn.Linear):
            gated.append(relu)
            inputs.append(h)
            h, relu = F.linear(h, layer.weight, layer.bias), False
        else:
            h, relu = torch.relu(h), True
    if linears[-1].out_features != 1:
        raise ConfigError("backend 'linear' needs a single-logit output layer")
    z, y = h.squeeze(-1), yb.to(h.dtype)
    if cfg.pos_weight is None:
        d = torch.sigmoid(z).sub_(y)
    else:
        pw = cfg.pos_weight
        d = torch.sigmoid(z).mul_(1.0 + (pw - 1.0) * y).sub_(pw * y)
    g = d.unsqueeze(-1)
    backprops: list[torch.Tensor] = []
    for k in range(len(linears) - 1, -1, -1):
        backprops.append(g)
        if k:
            g = g @ linears[k].weight
            if gated[k]:
                g = torch.ops.aten.threshold_backward(g, inputs[k], 0)
        # a leading ReLU (before the first Linear) only masks the input; nothing to propagate
    backprops.reverse()
    return linears, inputs, backprops


def _linear_sums(
    linears: Sequence[nn.Linear],
    inputs: Sequence[torch.Tensor],
    backprops: Sequence[torch.Tensor],
    factor: torch.Tensor | None,
    out: Sequence[torch.Tensor] | None,
) -> list[torch.Tensor]:
    """``sum_i c_i g_i a_i^T`` (and ``sum_i c_i g_i`` for biases): one matmul per layer. With a
    ``factor``, the ``backprops`` (temporaries of the caller) are scaled in place."""
    sums: list[torch.Tensor] = []
    slots = iter(out) if out is not None else None
    for a, g, layer in zip(inputs, backprops, linears, strict=True):
        gc_t = (g if factor is None else g.mul_(factor)).T
        if slots is None:
            sums.append(gc_t @ a)
            if layer.bias is not None:
                sums.append(gc_t.sum(1))
        else:
            sums.append(torch.mm(gc_t, a, out=next(slots)))
            if layer.bias is not None:
                sums.append(torch.sum(gc_t, 1, out=next(slots)))
    return sums


def input_sq_norms(
    model: nn.Module, x: torch.Tensor, layers: Sequence[nn.Module] | None = None
) -> torch.Tensor:
    """Per row, ``||a_i||^2`` (+ 1 for a bias) of the first Linear layer's input: ``||x_i||^2``,
    or of ``relu(x_i)`` behind a leading ReLU. It does not change during training, so the DP loop
    computes it once for all rows and passes the batch's rows to ``linear_clipped_sum``."""
    layers = model_layers(model) if layers is None else layers
    with torch.no_grad():
        for layer in layers:
            if isinstance(layer, nn.Linear):
                sq: torch.Tensor = torch.linalg.vecdot(x, x)
                return sq.add_(1.0) if layer.bias is not None else sq
            x = torch.relu(x)
    raise ConfigError("backend 'linear' needs a Linear layer")


def linear_clipped_sum(
    model: nn.Module,
    xb: torch.Tensor,
    yb: torch.Tensor,
    cfg: TrainConfig,
    clip: float,
    out: Sequence[torch.Tensor] | None = None,
    layers: Sequence[nn.Module] | None = None,
    *,
    scale: float = 1.0,
    first_sq: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Sum over the batch of per-example gradients clipped to ``clip``, in ``parameters()`` order.

    Closed form, no autograd (``_linear_backprops``). A layer's per-example gradient is ``g_i a_i^T``
    (+ ``g_i`` for the bias), so ``||.||^2 = ||g_i||^2 (||a_i||^2 + 1)`` (the ghost norm); the
    clipped sum is then ``(g * c)^T a``, the cost of a plain backward. Results are written into
    ``out`` (same shapes as the parameters) when given. ``layers``: ``model_layers(model)``,
    precomputed by the training loop. ``scale`` multiplies the result (DP-SGD folds its ``1 / (q n)``
    into the clip factors: ``scale min(1, C / (norm + 1e-6)) = scale C / max(norm + 1e-6, C)``);
    ``first_sq``: ``input_sq_norms`` of the batch's rows, when the caller has them.
    """
    layers = model_layers(model) if layers is None else layers
    with torch.no_grad():
        linears, inputs, backprops = _linear_backprops(model, xb, yb, cfg, layers)
        sq: torch.Tensor | None = None
        for k, (a, g, layer) in enumerate(zip(inputs, backprops, linears, strict=True)):
            g2 = torch.linalg.vecdot(g, g)
            if k == 0 and first_sq is not None:
                term = g2.mul_(first_sq)
            else:
                a2 = torch.linalg.vecdot(a, a)
                term = g2.mul_(a2.add_(1.0)) if layer.bias is not None else g2.mul_(a2)
            sq = term if sq is None else sq.add_(term)
        assert sq is not None
        factor = torch.div(clip * scale, sq.sqrt_().add_(_STABILITY).clamp_(min=clip)).unsqueeze_(-1)
        return _linear_sums(linears, inputs, backprops, factor, out)


def _logit_grad(layer: nn.Linear, xb: torch.Tensor, yb: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """A single Linear layer with one logit (logistic regression): the loss gradient at the logit
    per example, shape (B,) (``_linear_backprops`` for this case, in fewer calls)."""
    z = F.linear(xb, layer.weight, layer.bias).squeeze_(-1)
    if cfg.pos_weight is None:
        return torch.sigmoid_(z).sub_(yb)
    pw = cfg.pos_weight
    return torch.sigmoid_(z).mul_(1.0 + (pw - 1.0) * yb).sub_(pw * yb)


def is_logreg(layers: Sequence[nn.Module]) -> bool:
    """One ``nn.Linear`` with one output and a bias (``logreg_clipped_sum``'s case)."""
    only = layers[0]
    return (
        len(layers) == 1 and isinstance(only, nn.Linear) and only.out_features == 1 and only.bias is not None
    )


def _logit_sums(d: torch.Tensor, xb: torch.Tensor, out: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
    torch.mm(d.unsqueeze(0), xb, out=out[0])
    torch.sum(d, 0, keepdim=True, out=out[1])
    return out


def logreg_row_norms(x: torch.Tensor, clip: float, scale: float) -> torch.Tensor:
    """For ``logreg_clipped_sum``: per row ``sqrt(||x_i||^2 + 1) / (clip scale)``, computed once."""
    sq: torch.Tensor = torch.linalg.vecdot(x, x)
    return sq.add_(1.0).sqrt_().div_(clip * scale)


def logreg_clipped_sum(
    layer: nn.Linear,
    xb: torch.Tensor,
    yb: torch.Tensor,
    cfg: TrainConfig,
    rows: torch.Tensor,
    clip: float,
    scale: float,
    out: Sequence[torch.Tensor],
) -> Sequence[torch.Tensor]:
    """``linear_clipped_sum(..., scale=scale)`` for one Linear layer with one logit and a bias,
    written into ``out`` (weight, bias). Example i's gradient is ``d_i (x_i, 1)``, its norm
    ``|d_i| sqrt(||x_i||^2 + 1)``; with ``rows = logreg_row_norms(x, clip, scale)`` the factor
    ``scale min(1, C / (norm + 1e-6))`` is ``1 / max(|d_i| rows_i + 1e-6 / (C scale), 1 / scale)``:
    four calls a step on top of the plain gradient."""
    with torch.no_grad():
        d = _logit_grad(layer, xb, yb, cfg)
        den = torch.abs(d).mul_(rows).add_(_STABILITY / (clip * scale)).clamp_(min=1.0 / scale)
        return _logit_sums(d.div_(den), xb, out)


def linear_grad_sum(
    model: nn.Module,
    xb: torch.Tensor,
    yb: torch.Tensor,
    cfg: TrainConfig,
    out: Sequence[torch.Tensor] | None = None,
    layers: Sequence[nn.Module] | None = None,
) -> Sequence[torch.Tensor]:
    """The plain (unclipped) gradient sum by the same closed-form forward/backward as
    ``linear_clipped_sum`` (and ``logreg_clipped_sum``'s for a single one-logit Linear layer with
    ``out`` given): the fair non-private baseline of ``benchmarks/dp_overhead.py``."""
    layers = model_layers(model) if layers is None else layers
    with torch.no_grad():
        if out is not None and is_logreg(layers):
            return _logit_sums(_logit_grad(layers[0], xb, yb, cfg), xb, out)  # type: ignore[arg-type]
        linears, inputs, backprops = _linear_backprops(model, xb, yb, cfg, layers)
        return _linear_sums(linears, inputs, backprops, None, out)


class OpacusClipper:
    """Per-example gradients from Opacus' ``GradSampleModule``; clipping by ``DPOptimizer``."""

    def __init__(self, model: nn.Module, mode: str, clip: float, batch_size: int) -> None:
        self.gsm = get_gsm_class(mode)(model, batch_first=True, loss_reduction="sum")
        inner = torch.optim.SGD(self.gsm.parameters(), lr=0.0)  # never steps; clipping only
        self.opt = DPOptimizer(
            inner,
            noise_multiplier=0.0,
            max_grad_norm=clip,
            expected_batch_size=batch_size,
            loss_reduction="sum",
        )

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, cfg: TrainConfig) -> list[torch.Tensor]:
        self.opt.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # inputs need no grad; the hook still sees the outputs
            warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
            losses(self.gsm(xb), yb, cfg).sum().backward()  # type: ignore[no-untyped-call]
        self.opt.clip_and_accumulate()
        sums = [p.summed_grad.detach().clone() for p in self.opt.params]
        self.opt.zero_grad(set_to_none=True)
        return sums

    def close(self) -> None:
        """Detach Opacus' hooks and per-sample attributes from the wrapped model."""
        self.gsm._close()
