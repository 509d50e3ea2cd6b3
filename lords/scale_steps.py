"""Learning rates for trained scales: the step a factored scale ``S = B·A`` takes under Adam, made the step a
block scale takes.

Adam moves every parameter entry by about ``lr`` a step whatever its gradient's size (exactly ``lr·sign(g)`` at the
first step). A block scale is an entry of ``S``: each element of ``S`` moves by ``lr``. A factor entry ``B[i, k]``
moves the whole row ``S[i, :]`` by ``lr·A[k, :]``; when the gradient keeps its sign over steps (the drift that a
learning rate too large for the scales shows as a loss that falls, then rises), the ``r`` entries of ``B[i, :]``
and of ``A[:, j]`` add up, and one step moves ``S[i, j]`` by up to ``lr_B·‖A[:, j]‖₁ + lr_A·‖B[i, :]‖₁``. So the
same ``lr`` on ``B`` and ``A`` is a step in ``S`` that grows with the scales' size and the rank: in units of ``√S``,
not ``S`` (on SmolLM2-135M at 3 bits, block 64, ``‖A[:, j]‖₁`` and ``‖B[i, :]‖₁`` average 0.35–1.9 over layers;
its first Adam step in ``S`` measured 0.6–1.8 times the block scales', and LoRDS QAT at ``lr`` 1e-3 fell, then rose
where block-wise QAT trained).

The ``per_factor`` rule (:func:`factor_lrs`) takes ``lr_B = lr / (2·mean_j ‖A[:, j]‖₁)`` and
``lr_A = lr / (2·mean_i ‖B[i, :]‖₁)``, from the factors at the start of training: the sign-coherent step of an
average element of ``S`` is then ``lr``, a block scale's, and the learning rate means the same for both methods (one
grid serves both). It is a bound: where signs do not agree over the rank, the step is smaller (measured at the first
step on real gradients of a tiny Llama: 0.6–0.8 of the block scales', with weights of any size). ``shared`` (one ``lr`` for every scale parameter) is the rule
before this one.
"""

from __future__ import annotations

import torch
from torch import nn

SCALE_STEPS = ("per_factor", "shared")


def factor_lrs(B: torch.Tensor, A: torch.Tensor, lr: float) -> tuple[float, float]:
    """``(lr_B, lr_A)`` for the factors ``B (n, r)``, ``A (r, m)`` of ``S = B·A`` (any float dtype): ``lr / (2·mean_j
    ‖A[:, j]‖₁)`` and ``lr / (2·mean_i ‖B[i, :]‖₁)``, so that a sign-coherent Adam step moves an average element of
    ``S`` by ``lr``, as it moves a block scale. A zero factor (nothing to scale by) keeps ``lr``."""
    a = float(A.detach().float().abs().sum(0).mean())
    b = float(B.detach().float().abs().sum(1).mean())
    return (lr / (2 * a) if a > 0 else lr), (lr / (2 * b) if b > 0 else lr)


def scale_param_groups(scales: list[nn.Module], lr: float, rule: str = "per_factor") -> list[dict]:
    """Optimizer parameter groups for the scale modules ``scales`` (``LowRankScale``, ``BlockScale``, …) at
    learning rate ``lr``: under ``per_factor`` two groups per low-rank scale (``B`` at ``lr_B``, ``A`` at ``lr_A``,
    :func:`factor_lrs`) and one group at ``lr`` for every other scale parameter; under ``shared`` one group at
    ``lr``. Each group names its rule in ``"scale_step"`` (what a log or a test reads)."""
    if rule not in SCALE_STEPS:
        from .errors import ConfigError

        raise ConfigError(f"scale_step={rule!r} is not one of {SCALE_STEPS}")
    if rule == "shared":
        return [{"params": [p for s in scales for p in s.parameters()], "lr": lr, "scale_step": rule}]
    groups, others = [], []
    for s in scales:
        B, A = getattr(s, "B", None), getattr(s, "A", None)
        if isinstance(B, nn.Parameter) and isinstance(A, nn.Parameter):
            lr_B, lr_A = factor_lrs(B, A, lr)
            groups += [{"params": [B], "lr": lr_B, "scale_step": rule}, {"params": [A], "lr": lr_A, "scale_step": rule}]
            others += [p for p in s.parameters() if p is not B and p is not A]
        else:
            others += list(s.parameters())
    return groups + ([{"params": others, "lr": lr, "scale_step": rule}] if others else [])


def scale_step_size(scale: nn.Module, grads: list[torch.Tensor], lrs: list[float]) -> float:
    """``‖S(θ + Δθ) − S(θ)‖_F / ‖S(θ)‖_F`` for Adam's first step ``Δθ = −lr·sign(g)`` on each parameter of
    ``scale`` (in ``parameters()`` order, with its gradient and learning rate): the relative step in ``S``."""
    with torch.no_grad():
        S = scale()
        saved = [p.detach().clone() for p in scale.parameters()]
        for p, g, lr in zip(scale.parameters(), grads, lrs):
            p.sub_(lr * torch.sign(g))
        moved = scale()
        for p, x in zip(scale.parameters(), saved):
            p.copy_(x)
    return float((moved - S).norm() / S.norm())
