"""Per-example clipped gradient sums for convolutional and other feed-forward models, vectorised.

For an ``nn.Sequential`` of ``nn.Linear``, ``nn.Conv2d`` and parameter-free layers (activations,
pooling, ``nn.Flatten``): one forward, one autograd backward to the *outputs* of the parameter
layers (no weight gradients), then per layer (the "mixed ghost clipping" of Bu et al. 2022,
"Scalable and Efficient Training of Large Convolutional Neural Networks with Differential
Privacy", Sec. 3):

- ``nn.Linear`` on ``(B, d)`` inputs: the ghost norm ``||g_i a_i^T||^2 = ||g_i||^2 ||a_i||^2``
  (Goodfellow 2015; Li et al. 2022, Sec. 4), nothing per example is materialised;
- ``nn.Conv2d``: the per-example gradients ``G_i = g_i U_i^T`` with ``U_i`` the unfolded
  (im2col) input, one batched matmul (``B x C_out x C_in k^2`` values: small for small CNNs;
  the ghost norm would cost ``B P^2`` for ``P`` output positions, more for these layers).

Every example's squared norms are summed over the layers, its factor is ``min(1, C / (norm + 1e-6))``
(as Opacus), and each layer's clipped sum is one matmul with the factors folded in. Equal to
Opacus' per-example clipping (tests/privacy/test_ghost.py).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

from fedcore.config.train import TrainConfig
from fedcore.privacy.grad_sample import all_trained, losses, model_layers

__all__ = ["ghost_clipped_sum", "ghost_supported"]

_STABILITY = 1e-6  # Opacus' clip factor C / (norm + 1e-6)
_FREE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.GELU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten)


def _conv_ok(m: nn.Conv2d) -> bool:
    return m.groups == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str)


def ghost_supported(model: nn.Module) -> bool:
    """Whether ``model`` is an ``nn.Sequential`` of ``nn.Linear``, ``nn.Conv2d`` (groups 1, zero or
    no padding) and parameter-free activation/pooling/flatten layers, with at least one parameter layer,
    every parameter trained."""
    layers = model_layers(model)
    params = [m for m in layers if isinstance(m, nn.Linear | nn.Conv2d)]
    return (
        bool(params)
        and all_trained(model)
        and all(
            (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and _conv_ok(m)) or isinstance(m, _FREE))
            and not getattr(m, "inplace", False)  # an in-place activation would overwrite a layer output
            for m in layers
        )
    )


def _per_layer(
    layer: nn.Module, a: torch.Tensor, g: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(per-example squared norms, per-example weight gradients or None for the ghost norm)."""
    n = a.shape[0]
    if isinstance(layer, nn.Conv2d):
        pad = layer.padding
        assert not isinstance(pad, str)  # ghost_supported refuses string padding
        u = F.unfold(a, layer.kernel_size, layer.dilation, pad, layer.stride)  # (B, K, P)
        gm = g.reshape(n, g.shape[1], -1)  # (B, C_out, P)
        per = torch.bmm(gm, u.transpose(1, 2))  # (B, C_out, K)
        sq = per.pow(2).sum((1, 2))
        if layer.bias is not None:
            sq += gm.sum(2).pow(2).sum(1)
        return sq, per
    if a.dim() == 2:
        g2 = g.pow(2).sum(1)
        return g2 * a.pow(2).sum(1) + (g2 if layer.bias is not None else 0.0), None
    per = torch.einsum("b...o,b...i->boi", g, a)  # Linear over extra dims: materialise
    sq = per.pow(2).sum((1, 2))
    if layer.bias is not None:
        sq += g.reshape(n, -1, g.shape[-1]).sum(1).pow(2).sum(1)
    return sq, per


def _layer_sum(
    layer: nn.Module, a: torch.Tensor, g: torch.Tensor, per: torch.Tensor | None, c: torch.Tensor
) -> list[torch.Tensor]:
    """This layer's clipped sums ``sum_i c_i grad_i``, weight then bias (``parameters()`` order)."""
    n = a.shape[0]
    if per is not None:
        weight = torch.mv(per.reshape(n, -1).T, c).view(cast(torch.Tensor, layer.weight).shape)
    else:
        weight = (g * c.unsqueeze(-1)).T @ a
    sums = [weight]
    if layer.bias is not None:
        gb = (
            g.reshape(n, g.shape[1], -1).sum(2)
            if isinstance(layer, nn.Conv2d)
            else g.reshape(n, -1, g.shape[-1]).sum(1)
        )
        sums.append(torch.mv(gb.T, c))
    return sums


def ghost_clipped_sum(
    model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, cfg: TrainConfig, clip: float
) -> list[torch.Tensor]:
    """Sum over the batch of per-example gradients clipped to ``clip``, in ``parameters()`` order.

    ``model`` must satisfy ``ghost_supported``; its loss is fedcore's BCE-with-logits (one logit).
    """
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
    params: list[nn.Module] = []
    h = xb
    with torch.enable_grad():
        for layer in model_layers(model):
            if isinstance(layer, nn.Linear | nn.Conv2d):
                inputs.append(h.detach())
                h = layer(h)
                outputs.append(h)
                params.append(layer)
            else:
                h = layer(h)
        loss = losses(h, yb, cfg).sum()
        grads = torch.autograd.grad(loss, outputs)  # to the layer outputs only: no weight grads
    with torch.no_grad():
        sq = torch.zeros(xb.shape[0], dtype=xb.dtype)
        pers: list[torch.Tensor | None] = []
        for layer, a, g in zip(params, inputs, grads, strict=True):
            s, per = _per_layer(layer, a, g)
            sq += s
            pers.append(per)
        c = (clip / (sq.sqrt_() + _STABILITY)).clamp_(max=1.0)
        sums: list[torch.Tensor] = []
        for layer, a, g, per in zip(params, inputs, grads, pers, strict=True):
            sums += _layer_sum(layer, a, g, per, c)
        return sums
