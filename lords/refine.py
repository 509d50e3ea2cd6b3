"""Algorithm 1 of LoRDS, over either scale parameterisation.

Alternate ``T`` times: (quantize) re-pick ``Q = nearest_code(W ⊘ S)`` with the scales fixed;
(adapt) one Adam step on the scales with ``Q`` fixed, on an objective of the error ``E = W − S ⊙ grid[Q]``.
The scales are LoRDS's ``S = B·A`` or the block-wise scales themselves, so the block-wise baseline can
get the very same optimiser (an ablation the paper lacks). The best iterate under the objective is kept,
the starting point included, so refinement never returns something worse than it was given.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .blockwise import expand_blocks
from .grids import nearest_code
from .config import RefineConfig
from .errors import ConfigError, ShapeError


class LowRankScale(nn.Module):
    """``S = B·A`` with ``B (n, r)`` and ``A (r, m)``."""

    def __init__(self, B: torch.Tensor, A: torch.Tensor):
        super().__init__()
        self.B = nn.Parameter(B.detach().float().clone())
        self.A = nn.Parameter(A.detach().float().clone())

    def forward(self) -> torch.Tensor:
        return self.B @ self.A


class BlockScale(nn.Module):
    """Piecewise-constant ``S`` from block scales ``(n, nb)`` repeated over ``block_size`` inputs."""

    def __init__(self, scales: torch.Tensor, in_features: int, block_size: int):
        super().__init__()
        self.scales = nn.Parameter(scales.detach().float().clone())
        self.in_features = in_features
        self.block_size = block_size

    def forward(self) -> torch.Tensor:
        return expand_blocks(self.scales, self.in_features, self.block_size)


@dataclass
class LayerStats:
    """What a layer's calibration inputs say: ``diag (m,) = E[x_j²]`` and a row sample ``x (t, m)``."""

    diag: torch.Tensor
    sample: torch.Tensor | None = None


@dataclass
class RefineResult:
    """Codes at the best iterate, the objective per iteration (index 0 = the start) and the best step."""

    codes: torch.Tensor
    losses: list[float] = field(default_factory=list)
    best_step: int = 0

    @property
    def start_loss(self) -> float:
        return self.losses[0]

    @property
    def best_loss(self) -> float:
        return self.losses[self.best_step]


def objective_fn(name: str, stats: LayerStats | None, in_features: int):
    """The loss ``f(E)`` for an error matrix ``E (n, m)``; mean-normalised so lr is shape-independent.

    For autograd users (the Lightning stage, tests); ``refine`` uses the same terms with explicit gradients.
    """
    d, x, kind = _objective_terms(name, stats, in_features, None if stats is None else stats.diag.device)

    def loss(err: torch.Tensor) -> torch.Tensor:
        on = (lambda t: None if t is None else t.to(err.device))  # no copy when already there
        return (err * _weighted(err, on(d), on(x), kind)).sum() / err.numel()

    return loss


def _objective_terms(name: str, stats: LayerStats | None, in_features: int, device):
    """``(d, x, kind)`` such that loss ``= ⟨E, h(E)⟩ / numel`` with ``h`` from :func:`_weighted`.

    weight: ``h(E) = E``; act_diag: ``E ⊙ d`` with ``d = E[x²] / mean(E[x²])``; act: ``E·XᵀX`` with
    ``X`` scaled by ``1 / sqrt(t·mean(E[x²]))``. The normalisations put every objective on the weight-MSE
    scale, so one lr fits all. Refuses missing or mis-shaped statistics, naming what is wrong.
    """
    if name == "weight":
        return torch.ones(in_features, device=device), None, "diag"
    if name not in ("act_diag", "act"):
        raise ConfigError(f"objective={name!r} is not one of ('weight', 'act_diag', 'act')")
    if stats is None:
        raise ConfigError(f"objective={name!r} needs calibration statistics; none were collected for this layer")
    if stats.diag.shape != (in_features,):
        raise ShapeError(f"calibration diag has shape {tuple(stats.diag.shape)}, layer has {in_features} inputs")
    norm = stats.diag.float().mean().clamp_min(1e-12)
    if name == "act_diag":
        return (stats.diag.float() / norm).to(device), None, "diag"
    if stats.sample is None or stats.sample.shape[0] == 0:
        raise ConfigError("objective='act' needs a sample of calibration inputs (sample_tokens > 0)")
    x = stats.sample.float().to(device)
    return None, x / (x.shape[0] * norm.to(device)).sqrt(), "act"


def _weighted(err: torch.Tensor, d, x, kind: str) -> torch.Tensor:
    """``h(E)``: the error weighted by what the layer's inputs see (``kind`` from :func:`_objective_terms`)."""
    if kind == "diag":
        return err * d
    if kind == "gram":  # x holds XᵀX (m, m): cheaper than two products with X when m < 2t
        return err @ x
    return (err @ x.T) @ x


class _Adam:
    """Adam on a list of tensors with gradients given explicitly (no autograd graph per step)."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def step(self, grads: list[torch.Tensor]) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.addcdiv_(m, v.div(c2).sqrt_().add_(self.eps), value=-self.lr / c1)


def _scale_grads(scale: nn.Module, grad_S: torch.Tensor) -> list[torch.Tensor]:
    """Chain rule from ``∂loss/∂S (n, m)`` to the scale's parameters (``B, A`` or block scales)."""
    if isinstance(scale, LowRankScale):
        return [grad_S @ scale.A.T, scale.B.T @ grad_S]
    if isinstance(scale, BlockScale):
        n, m = grad_S.shape
        nb, bs = scale.scales.shape[1], scale.block_size
        padded = grad_S.new_zeros(n, nb * bs)
        padded[:, :m] = grad_S
        return [padded.view(n, nb, bs).sum(-1)]
    raise ConfigError(f"cannot refine a scale of type {type(scale).__name__}")


def _step(w, S, grid, d, x, kind: str):
    """One Algorithm-1 evaluation: codes of ``w / S``, the loss, and ``∂loss/∂S``.

    In-place where it can: the step is memory-bound on CPU. (A ``torch.compile``d version was tried:
    on one thread it ran 2× slower than this at 4 bits.)
    """
    # Where S is exactly 0, any code gives E = W: divide by 1 there.
    codes = nearest_code(w / torch.where(S == 0, torch.ones_like(S), S), grid)
    values = grid[codes.long()]
    err = torch.addcmul(w, S, values, value=-1.0)
    h = _weighted(err, d, x, kind)
    loss = torch.vdot(err.flatten(), h.flatten()) / err.numel()
    return codes, loss, h.mul_(values).mul_(-2.0 / err.numel())


@torch.no_grad()
def refine(
    weight: torch.Tensor,
    scale: nn.Module,
    grid: torch.Tensor,
    config: RefineConfig,
    stats: LayerStats | None = None,
) -> RefineResult:
    """Run Algorithm 1 in place on ``scale`` (left at its best iterate); ``weight (n, m)``.

    Gradients are written out by hand (``∂loss/∂S = −2·h(E) ⊙ grid[Q] / numel``, then the chain rule
    to ``B, A`` or the block scales): no autograd graph per step. Float32 math on ``weight``'s device.
    """
    w = weight.detach().float()
    grid = grid.to(w.device).float()
    scale = scale.to(w.device)
    d, x, kind = _objective_terms(config.objective, stats, w.shape[1], w.device)
    if kind == "act" and w.shape[1] < 2 * x.shape[0]:
        x, kind = x.T @ x, "gram"  # the same loss, fewer flops per step
    params = list(scale.parameters())
    opt = _Adam(params, lr=config.lr)
    best_params = [p.detach().clone() for p in params]
    result = RefineResult(codes=torch.empty(0))
    best = float("inf")
    for step in range(config.steps + 1):
        codes, loss, grad_S = _step(w, scale(), grid, d, x, kind)
        value = float(loss)
        result.losses.append(value)
        if value < best:
            best, result.best_step, result.codes = value, step, codes
            best_params = [p.detach().clone() for p in params]
        if step == config.steps:
            break
        opt.step(_scale_grads(scale, grad_S))
    for p, b in zip(params, best_params):
        p.copy_(b)
    return result
