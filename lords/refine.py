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

from .blockwise import expand_blocks, quantize_with_scale
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
    """The loss ``f(E)`` for an error matrix ``E (n, m)``; mean-normalised so lr is shape-independent."""
    if name == "weight":
        return lambda err: err.pow(2).mean()
    if stats is None:
        raise ConfigError(f"objective={name!r} needs calibration statistics; none were collected for this layer")
    if stats.diag.shape != (in_features,):
        raise ShapeError(f"calibration diag has shape {tuple(stats.diag.shape)}, layer has {in_features} inputs")
    if name == "act_diag":
        # Normalise by the mean so the loss is on the weight-MSE scale whatever the activation size.
        d = (stats.diag / stats.diag.mean().clamp_min(1e-12)).float()
        return lambda err: (err.pow(2) * d).mean()
    if name == "act":
        if stats.sample is None:
            raise ConfigError("objective='act' needs a sample of calibration inputs (sample_tokens > 0)")
        x = stats.sample.float()
        norm = stats.diag.mean().clamp_min(1e-12).float()
        return lambda err: (err @ x.T).pow(2).mean() / norm
    raise ConfigError(f"objective={name!r} is not one of ('weight', 'act_diag', 'act')")


def refine(
    weight: torch.Tensor,
    scale: nn.Module,
    grid: torch.Tensor,
    config: RefineConfig,
    stats: LayerStats | None = None,
) -> RefineResult:
    """Run Algorithm 1 in place on ``scale`` (left at its best iterate); ``weight (n, m)``.

    Each iteration costs one scale forward/backward and one nearest-code search. Float32 math on
    ``weight``'s device.
    """
    w = weight.detach().float()
    grid = grid.to(w.device)
    scale = scale.to(w.device)
    loss_of = objective_fn(config.objective, _to(stats, w.device), w.shape[1])
    opt = torch.optim.Adam(scale.parameters(), lr=config.lr)
    best_state = {k: v.detach().clone() for k, v in scale.state_dict().items()}
    result = RefineResult(codes=torch.empty(0))
    best = float("inf")
    for step in range(config.steps + 1):
        S = scale()
        codes = quantize_with_scale(w, S.detach(), grid)
        loss = loss_of(w - S * grid[codes.long()])
        value = float(loss.detach())
        result.losses.append(value)
        if value < best:
            best, result.best_step, result.codes = value, step, codes
            best_state = {k: v.detach().clone() for k, v in scale.state_dict().items()}
        if step == config.steps:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    scale.load_state_dict(best_state)
    return result


def _to(stats: LayerStats | None, device) -> LayerStats | None:
    if stats is None:
        return None
    sample = None if stats.sample is None else stats.sample.to(device)
    return LayerStats(diag=stats.diag.to(device), sample=sample)
