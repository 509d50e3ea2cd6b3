"""Algorithm 1 on many layers of one shape at once: the same arithmetic as :func:`lords.refine.refine` per layer,
on stacked tensors, with no host synchronisation inside the loop.

On a GPU the per-layer loop is bound by kernel launches and by the loss read back every step (SmolLM2-135M: 210
layers × 500 steps took ~90 s on an H200); stacking the 30 layers of each shape makes it a few dozen launches per
step for the whole model. The best iterate is tracked on the device per layer. Supports the ``weight`` and
``act_diag`` objectives (a diagonal weighting) and the two scale modules of ``lords.scales``; anything else goes
through the per-layer path.
"""

from __future__ import annotations

import torch

from .config import RefineConfig
from .refine import LayerStats, RefineResult, _objective_terms
from .scales import BlockScale, LowRankScale

OBJECTIVES = ("weight", "act_diag")
"""The objectives with a diagonal weighting, which the stacked loop supports."""


def batchable(scale, config: RefineConfig) -> bool:
    return config.objective in OBJECTIVES and type(scale) in (LowRankScale, BlockScale)


def _params(scales: list) -> list[torch.Tensor]:
    if isinstance(scales[0], LowRankScale):
        return [torch.stack([s.B.detach() for s in scales]), torch.stack([s.A.detach() for s in scales])]
    return [torch.stack([s.scales.detach() for s in scales])]


def _scale_matrix(params: list[torch.Tensor], kind: type, m: int, block: int) -> torch.Tensor:
    if kind is LowRankScale:
        return torch.bmm(params[0], params[1])
    return params[0].repeat_interleave(block, dim=2)[:, :, :m]


def _param_grads(params, grad_S: torch.Tensor, kind: type, block: int) -> list[torch.Tensor]:
    if kind is LowRankScale:
        B, A = params
        return [torch.bmm(grad_S, A.transpose(1, 2)), torch.bmm(B.transpose(1, 2), grad_S)]
    L, n, m = grad_S.shape
    nb = params[0].shape[2]
    padded = grad_S.new_zeros(L, n, nb * block)
    padded[:, :, :m] = grad_S
    return [padded.view(L, n, nb, block).sum(-1)]


@torch.no_grad()
def refine_batched(
    weights: list[torch.Tensor], scales: list, grid: torch.Tensor, config: RefineConfig, stats: list[LayerStats | None]
) -> list[RefineResult]:
    """Algorithm 1 in place on each of ``scales`` (left at its best iterate); ``weights`` share one shape
    ``(n, m)`` and the scales one type and shape. Adam as :class:`lords.refine.RefineAdam` (elementwise)."""
    kind = type(scales[0])
    block = getattr(scales[0], "block_size", 0)
    W = torch.stack([w.detach().float() for w in weights])
    L, n, m = W.shape
    d = torch.stack([_objective_terms(config.objective, s, m, W.device)[0] for s in stats])[:, None, :]
    grid = grid.to(W.device).float()
    mids = (grid[1:] + grid[:-1]) / 2
    params = _params(scales)
    best = [p.clone() for p in params]
    exp_avg = [torch.zeros_like(p) for p in params]
    exp_sq = [torch.zeros_like(p) for p in params]
    best_loss = torch.full((L,), float("inf"), device=W.device)
    best_step = torch.zeros(L, dtype=torch.long, device=W.device)
    losses = []
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(config.steps + 1):  # T Adam steps, T + 1 scored points
        S = _scale_matrix(params, kind, m, block)
        safe = torch.where(S == 0, torch.ones_like(S), S)
        values = grid[torch.bucketize(W / safe, mids)]
        err = torch.addcmul(W, S, values, value=-1.0)
        h = err * d
        loss = (err * h).sum((1, 2)) / (n * m)
        losses.append(loss)
        better = loss < best_loss
        best_loss = torch.where(better, loss, best_loss)
        best_step = torch.where(better, torch.full_like(best_step, t), best_step)
        for p, b in zip(params, best):
            b.copy_(torch.where(better.view(L, *[1] * (p.dim() - 1)), p, b))
        if t == config.steps:
            break
        grads = _param_grads(params, h.mul_(values).mul_(-2.0 / (n * m)), kind, block)
        c1, c2 = 1 - b1 ** (t + 1), 1 - b2 ** (t + 1)
        for p, g, m1, v in zip(params, grads, exp_avg, exp_sq):
            m1.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.addcdiv_(m1, v.div(c2).sqrt_().add_(eps), value=-config.lr / c1)
    curves = torch.stack(losses, dim=1).tolist()
    steps = best_step.tolist()
    S = _scale_matrix(best, kind, m, block)
    codes = torch.bucketize(W / torch.where(S == 0, torch.ones_like(S), S), mids).to(torch.uint8)
    results = []
    for i, scale in enumerate(scales):
        for p, b in zip(scale.parameters(), best):
            p.data.copy_(b[i])
        results.append(RefineResult(codes=codes[i], losses=curves[i], best_step=steps[i]))
    return results
