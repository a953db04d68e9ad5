"""The paper's adaptive learning rate (AdaLR) for adder layers, and its ablation baselines.

Adder outputs have a large variance, so after BatchNorm the gradients that reach adder filters are tiny.
AdaLR (Chen et al., CVPR 2020, eq. 12-13) rescales each adder layer's gradient to a fixed norm:

    G_l <- eta * sqrt(k_l) * G_l / ||G_l||_2        (k_l = number of elements of the layer's weight)

so the layer's local learning rate is alpha_l = eta * sqrt(k_l) / ||G_l||_2. Momentum, weight decay and the
global schedule act on the rescaled gradient afterwards, as in the authors' code. Modes:
``on`` (AdaLR), ``off`` (raw gradients), ``ilr`` (the paper's "increased learning rate" baseline: adder
gradients multiplied by a fixed ``ilr_factor``). Only :class:`addernet.Adder2d` weights are touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from addernet.nn.layer import Adder2d

MODES = ("on", "off", "ilr")


@dataclass(frozen=True)
class AdaLRStats:
    """What one application did, per adder layer (tensors, so reading them is the only synchronisation)."""

    names: list[str]
    grad_norms: torch.Tensor  # raw (unscaled) gradient norms
    alphas: torch.Tensor  # factors the gradients were multiplied by


@dataclass
class AdaptiveLR:
    mode: str = "on"
    eta: float = 0.2
    ilr_factor: float = 100.0
    eps: float = 1e-12  # floor of the norm: an all-zero gradient stays zero

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"adalr mode must be one of {MODES}, got {self.mode!r}")
        if self.eta <= 0 or self.ilr_factor <= 0:
            raise ValueError(f"eta and ilr_factor must be positive, got eta={self.eta}, ilr_factor={self.ilr_factor}")

    @torch.no_grad()
    def apply(self, model: nn.Module, grad_scale: float = 1.0) -> AdaLRStats | None:
        """Rescale the weight gradient of every adder layer of ``model`` in place.

        ``grad_scale`` is the loss scale still inside the gradients (mixed precision with a GradScaler, before
        unscaling): the result keeps that scale, so that unscaling later yields exactly the float32 update.
        """
        if self.mode == "off":
            return None
        layers = [(n, m.weight.grad) for n, m in model.named_modules()
                  if isinstance(m, Adder2d) and m.weight.grad is not None]
        if not layers:
            return None
        names, grads = [n for n, _ in layers], [g for _, g in layers]
        norms = torch.stack([n.float() for n in torch._foreach_norm(grads)]) / grad_scale
        if self.mode == "on":
            sqrt_k = torch.tensor([math.sqrt(g.numel()) for g in grads], device=norms.device)
            alphas = self.eta * sqrt_k / norms.clamp_min(self.eps)
        else:
            alphas = torch.full_like(norms, self.ilr_factor)
        torch._foreach_mul_(grads, [a.to(g.dtype) for a, g in zip(alphas.unbind(), grads)])
        return AdaLRStats(names, norms, alphas)
