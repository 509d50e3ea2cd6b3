"""Algorithm 1 of LoRDS, over either scale parameterisation.

Alternate ``T`` times: (quantize) re-pick ``Q = nearest_code(W ⊘ S)`` with the scales fixed;
(adapt) one Adam step on the scales with ``Q`` fixed, on an objective of the error ``E = W − S ⊙ grid[Q]``.
The scales are any module of ``lords.scales`` (LoRDS's ``S = B·A`` or the block-wise scales themselves),
so the block-wise baseline gets the very same optimiser (an ablation the paper lacks). The best iterate under
the objective is kept, the starting point included, so refinement never returns something worse than it was given.

One implementation serves every caller: :class:`Refiner` is one layer's state (an ``nn.Module``, so a Lightning
checkpoint holds it) and :class:`RefineAdam` the optimiser; :func:`refine` drives them for ``quantize_``, and
the Lightning PTQ-refine stage drives the same two objects for every layer at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .config import RefineConfig
from .errors import ConfigError, ShapeError
from .grids import nearest_code


@dataclass
class LayerStats:
    """What a layer's calibration inputs say: ``diag (m,) = E[x_j²]``, a row sample ``x (t, m)`` and, when asked
    for, the second moment ``gram (m, m) = E[x xᵀ]`` over every calibration token (GPTQ's Hessian)."""

    diag: torch.Tensor
    sample: torch.Tensor | None = None
    gram: torch.Tensor | None = None


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
        on = lambda t: None if t is None else t.to(err.device)  # no copy when already there
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


class RefineAdam(torch.optim.Optimizer):
    """Adam on gradients that :meth:`Refiner.evaluate` wrote into ``p.grad`` (elementwise, so one optimiser
    over many layers equals one per layer). Its arithmetic is fixed: results reproduce across releases."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["t"], st["m"], st["v"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                st["t"] += 1
                c1, c2 = 1 - b1 ** st["t"], 1 - b2 ** st["t"]
                st["m"].mul_(b1).add_(p.grad, alpha=1 - b1)
                st["v"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.addcdiv_(st["m"], st["v"].div(c2).sqrt_().add_(group["eps"]), value=-group["lr"] / c1)


def _step(w, S, grid, d, x, kind: str):
    """One Algorithm-1 evaluation: codes of ``w / S``, the loss, and ``∂loss/∂S``.

    In-place where it can: the step is memory-bound on CPU. (A ``torch.compile``d version was tried:
    on one thread it ran 2× slower than this at 4 bits.)
    """
    codes = nearest_code(w / _nonzero(S), grid)
    values = grid[codes.long()]
    err = torch.addcmul(w, S, values, value=-1.0)
    h = _weighted(err, d, x, kind)
    loss = torch.vdot(err.flatten(), h.flatten()) / err.numel()
    return codes, loss, h.mul_(values).mul_(-2.0 / err.numel())


class Refiner(nn.Module):
    """Algorithm 1 on one layer: ``evaluate()`` re-picks ``Q`` with the scales fixed, scores the objective, keeps
    the best iterate and writes ``∂loss/∂θ`` into the scale's ``.grad`` for :class:`RefineAdam`; ``finish()``
    scores the last iterate and restores the best. ``weight (n, m)``; float32 math on its device."""

    def __init__(
        self,
        weight: torch.Tensor,
        scale: nn.Module,
        grid: torch.Tensor,
        config: RefineConfig,
        stats: LayerStats | None = None,
    ):
        super().__init__()
        w = weight.detach().float()
        self.scale = scale.to(w.device)
        # Not persistent: rebuilt from the model on resume, so checkpoints hold only scales and the best iterate.
        self.register_buffer("weight", w, persistent=False)
        self.register_buffer("grid", grid.to(w.device).float(), persistent=False)
        d, x, kind = _objective_terms(config.objective, stats, w.shape[1], w.device)
        if kind == "act" and w.shape[1] < 2 * x.shape[0]:
            x, kind = x.T @ x, "gram"  # the same loss, fewer flops per step
        self.register_buffer("d", d, persistent=False)
        self.register_buffer("x", x, persistent=False)
        self.kind = kind
        for i, p in enumerate(self.scale.parameters()):
            self.register_buffer(f"best_{i}", p.detach().clone())
        self.losses: list[float] = []
        self.best_step, self.best_loss = 0, float("inf")
        self.codes: torch.Tensor | None = None

    def get_extra_state(self):
        return {"losses": self.losses, "best_step": self.best_step, "best_loss": self.best_loss}

    def set_extra_state(self, state):
        self.losses, self.best_step, self.best_loss = list(state["losses"]), state["best_step"], state["best_loss"]
        self.codes = None

    @torch.no_grad()
    def evaluate(self) -> float:
        """One Algorithm-1 evaluation at the current scales; returns the loss."""
        params = list(self.scale.parameters())
        codes, loss, grad_S = _step(self.weight, self.scale(), self.grid, self.d, self.x, self.kind)
        value = float(loss)
        self.losses.append(value)
        if value < self.best_loss:
            self.best_loss, self.best_step, self.codes = value, len(self.losses) - 1, codes
            for i, p in enumerate(params):
                getattr(self, f"best_{i}").copy_(p)
        grads = self.scale.grads(grad_S) if hasattr(self.scale, "grads") else _autograd_grads(self.scale, grad_S)
        for p, g in zip(params, grads):
            p.grad = g
        return value

    @torch.no_grad()
    def finish(self) -> RefineResult:
        """Score the final iterate (Algorithm 1 scores T + 1 points), restore the best; the result."""
        self.evaluate()
        for i, p in enumerate(self.scale.parameters()):
            p.copy_(getattr(self, f"best_{i}"))
            p.grad = None
        if self.codes is None:  # best iterate found before a resume: its codes were not kept
            self.codes = nearest_code(self.weight / _nonzero(self.scale()), self.grid)
        return RefineResult(codes=self.codes, losses=list(self.losses), best_step=self.best_step)


def _nonzero(S: torch.Tensor) -> torch.Tensor:
    # Where S is exactly 0, any code gives E = W: divide by 1 there.
    return torch.where(S == 0, torch.ones_like(S), S)


def _autograd_grads(scale: nn.Module, grad_S: torch.Tensor) -> list[torch.Tensor]:
    """Chain rule by autograd, for scale modules without an explicit ``grads``."""
    with torch.enable_grad():
        params = list(scale.parameters())
        return list(torch.autograd.grad((scale() * grad_S).sum(), params))


def refine(
    weight: torch.Tensor, scale: nn.Module, grid: torch.Tensor, config: RefineConfig, stats: LayerStats | None = None
) -> RefineResult:
    """Run Algorithm 1 in place on ``scale`` (left at its best iterate); ``weight (n, m)``.

    Gradients are written out by hand (``∂loss/∂S = −2·h(E) ⊙ grid[Q] / numel``, then the scale's own chain
    rule): no autograd graph per step.
    """
    refiner = Refiner(weight, scale, grid, config, stats)
    opt = RefineAdam(refiner.scale.parameters(), lr=config.lr)
    for _ in range(config.steps):
        refiner.evaluate()
        opt.step()
    return refiner.finish()
