"""GPTQ's code choice (Frantar et al., 2023) over any scale matrix: LoRDS's ``S = B·A`` or expanded block scales.

Nearest rounding picks each code alone. GPTQ picks the codes of column ``j`` as the nearest codes of
``W[:, j] ⊘ S[:, j]``, then spreads that column's rounding error over the columns not yet quantized through the
inverse Hessian of the layer's output error ``‖(W − Ŵ)Xᵀ‖²`` (``H = XᵀX`` + damping; the upper Cholesky factor of
``H⁻¹``, lazy updates ``lazy_block`` columns at a time, as in the paper). Because ``S`` holds one scale per
weight, no column order breaks a group: columns go by decreasing ``H_jj`` (act-order) at no storage cost.

With the codes fixed, the scales are refitted on the same output error (Adam through the scale module's
``grads``, the optimiser Algorithm 1 uses), and the two alternate ``rounds`` times. The start (Algorithm 1's
codes and scales, exactly what ``LordsConfig`` / ``BlockwiseConfig`` with the same ``refine`` produce) is a
candidate too: the layer kept is the one with the lowest output error on the calibration tokens, so a
``*_gptq`` config never does worse there than its nearest-rounding counterpart.

The modules built are plain ``LoRDSLinear`` / ``BlockLinear`` (only the codes differ), saved and loaded like any.
Calibration statistics come from the float model before any layer is replaced (as for every calibrated config
of the library), not from the already-quantized earlier layers as in GPTQ's sequential pass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .config import BlockwiseConfig, LordsConfig
from .errors import ConfigError
from .handlers import layer_report, register_handler, scale_method
from .refine import RefineAdam, refine


def _check(name: str, value, kind: type, minimum: float, strict: bool) -> None:
    ok = isinstance(value, kind) and not isinstance(value, bool) and (value > minimum if strict else value >= minimum)
    if not ok:
        raise ConfigError(
            f"{name}={value!r} must be {'an integer' if kind is int else 'a number'} {'>' if strict else '≥'} {minimum}"
        )


@dataclass(frozen=True)
class GPTQFields:
    """What both GPTQ configs add to their scale config."""

    damp: float = 0.01
    """Damping added to ``H``'s diagonal, as a fraction of its mean (GPTQ's ``percdamp``)."""
    lazy_block: int = 128
    """Columns per lazy batch: the error reaches later columns once per batch (GPTQ's ``blocksize``)."""
    act_order: bool = True
    """Quantize columns by decreasing ``H_jj`` (free here: every weight has its own scale)."""
    rounds: int = 1
    """GPTQ passes; after each, the scales are refitted for the new codes (when ``refit_steps`` > 0)."""
    refit_steps: int = 20
    """Adam steps on the scales per refit, codes fixed, objective ``‖(W − Ŵ)Xᵀ‖²`` (0: scales kept as started)."""
    refit_lr: float = 1e-3
    """Learning rate of the refit."""

    def check_gptq(self):
        _check("damp", self.damp, (int, float), 0, strict=True)
        _check("lazy_block", self.lazy_block, int, 1, strict=False)
        _check("rounds", self.rounds, int, 1, strict=False)
        _check("refit_steps", self.refit_steps, int, 0, strict=False)
        _check("refit_lr", self.refit_lr, (int, float), 0, strict=True)
        if not isinstance(self.act_order, bool):
            raise ConfigError(f"act_order={self.act_order!r} must be true or false")

    @property
    def needs_calibration(self) -> bool:
        return True  # the Hessian, whatever the refinement objective

    @property
    def needs_gram(self) -> bool:
        return True  # the Hessian E[x xᵀ] over every calibration token, accumulated as the statistics are collected

    def scale_config(self):
        """The plain scale config these codes sit on (its handler gives the init, Algorithm 1 and the module)."""
        base = self.base_type
        return base(**{f.name: getattr(self, f.name) for f in dataclasses.fields(base)})


@dataclass(frozen=True)
class LordsGPTQConfig(GPTQFields, LordsConfig):
    """LoRDS (init, then Algorithm 1 when ``refine`` is set) with GPTQ's codes and refitted ``B, A``."""

    sample_tokens: int = 0
    """Calibration rows kept per layer (only the ``act`` refinement objective reads them; the Hessian is accumulated
    over every calibration token)."""

    method: ClassVar[str] = "lords_gptq"
    base_type: ClassVar[type] = LordsConfig

    def __post_init__(self):
        super().__post_init__()
        self.check_gptq()


@dataclass(frozen=True)
class BlockwiseGPTQConfig(GPTQFields, BlockwiseConfig):
    """Block-wise absmax scales (then Algorithm 1 when ``refine`` is set) with GPTQ's codes and refitted scales."""

    sample_tokens: int = 0
    """Calibration rows kept per layer (only the ``act`` refinement objective reads them; the Hessian is accumulated
    over every calibration token)."""

    method: ClassVar[str] = "blockwise_gptq"
    base_type: ClassVar[type] = BlockwiseConfig

    def __post_init__(self):
        super().__post_init__()
        self.check_gptq()


def hessian(x: torch.Tensor) -> torch.Tensor:
    """``XᵀX / t (m, m)`` of calibration inputs ``x (t, m)``, float64."""
    x = x.double()
    return x.T @ x / max(x.shape[0], 1)


def damped(H: torch.Tensor, damp: float = 0.0) -> torch.Tensor:
    """A copy of ``H (m, m)`` in float64, dead inputs given a unit diagonal, plus ``damp`` times the mean diagonal."""
    H = H.double().clone()
    dead = H.diagonal() == 0
    H.diagonal()[dead] = 1.0
    H.diagonal().add_(damp * H.diagonal().mean())
    return H


def nearest_codes(values: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of the ascending ``grid`` for every element of ``values`` (uint8)."""
    mid = (grid[1:] + grid[:-1]) / 2
    return (values.unsqueeze(-1) > mid).sum(-1).to(torch.uint8)  # (torch.bucketize ran 50x slower on CPU here)


def gptq_codes(
    weight: torch.Tensor,
    S: torch.Tensor,
    grid: torch.Tensor,
    H: torch.Tensor,
    lazy_block: int = 128,
    act_order: bool = True,
) -> torch.Tensor:
    """GPTQ's codes ``(n, m)`` uint8 of ``weight (n, m)`` under the scale matrix ``S (n, m)`` on ``grid``, for the
    output error whose Hessian is ``H (m, m)`` (damped, positive definite)."""
    W = weight.detach().float().clone()
    S = S.detach().float()
    S = torch.where(S == 0, torch.ones_like(S), S)  # where S is 0 every code gives the same weight
    grid = grid.float()
    n, m = W.shape
    order = torch.argsort(H.diagonal(), descending=True) if act_order else torch.arange(m, device=W.device)
    W, S, H = W[:, order], S[:, order], H.double()[order][:, order]
    # The factorisations in float64 (H can be ill-conditioned), the column loop in float32 as GPTQ runs it.
    Hinv = torch.linalg.cholesky(torch.linalg.inv(H), upper=True).float()
    # Column j of W is row j of Wt: the loop touches contiguous rows.
    Wt, St = W.T.contiguous(), S.T.contiguous()
    codes = torch.empty(m, n, dtype=torch.uint8, device=W.device)
    for i1 in range(0, m, lazy_block):
        i2 = min(i1 + lazy_block, m)
        W1, H1 = Wt[i1:i2].clone(), Hinv[i1:i2, i1:i2]
        E1 = torch.empty_like(W1)
        for i in range(i2 - i1):
            w, s = W1[i], St[i1 + i]
            q = nearest_codes(w / s, grid)
            codes[i1 + i] = q
            err = (w - grid[q.long()] * s) / H1[i, i]
            W1[i:].sub_(H1[i, i:, None] * err[None, :])
            E1[i] = err
        Wt[i2:].sub_(Hinv[i1:i2, i2:].T @ E1)
    codes = codes.T
    out = torch.empty_like(codes)
    out[:, order] = codes
    return out


def output_error(weight: torch.Tensor, w_hat: torch.Tensor, H: torch.Tensor) -> float:
    """``tr(E H Eᵀ)`` with ``E = W − Ŵ``: the squared output error per calibration token."""
    E = weight.double() - w_hat.double()
    return float((E @ H * E).sum())


def refit(
    weight: torch.Tensor,
    scale: nn.Module,
    codes: torch.Tensor,
    grid: torch.Tensor,
    H: torch.Tensor,
    steps: int,
    lr: float,
) -> None:
    """Adam on ``scale``'s parameters, codes fixed, objective ``tr(E H Eᵀ) / (n·m·mean H_jj)`` (on the weight-MSE
    scale, as Algorithm 1's objectives are); the scale is left at its best iterate."""
    w = weight.detach().float()
    values = grid[codes.long()].float()
    Hn = (H / H.diagonal().mean()).float()
    params = list(scale.parameters())
    best, best_state = float("inf"), [p.detach().clone() for p in params]
    opt = RefineAdam(params, lr=lr)
    with torch.no_grad():
        for step in range(steps + 1):
            err = torch.addcmul(w, scale(), values, value=-1.0)
            h = err @ Hn
            loss = float((err * h).sum()) / err.numel()
            if loss < best:
                best, best_state = loss, [p.detach().clone() for p in params]
            if step == steps:
                break
            grad_S = h.mul_(values).mul_(-2.0 / err.numel())
            for p, g in zip(params, scale.grads(grad_S)):
                p.grad = g
            opt.step()
        for p, b in zip(params, best_state):
            p.copy_(b)
            p.grad = None


def quantize_gptq(name: str, linear: nn.Linear, config, stats):
    """The handler of both GPTQ configs: the base method's init (and Algorithm 1), then ``rounds`` of GPTQ codes
    and scale refits; the candidate with the lowest calibration output error is kept."""
    if stats is None or (stats.gram is None and (stats.sample is None or stats.sample.shape[0] == 0)):
        raise ConfigError(f"{name}: {config.method} needs calibration inputs (pass calib_ids to quantize_)")
    base_config = config.scale_config()
    method = scale_method(base_config)
    weight, grid, scale = method.start(name, linear, base_config)
    if base_config.refine is not None and base_config.refine.steps > 0:
        refine(weight, scale, grid, base_config.refine, stats)
    bias = None if linear.bias is None else linear.bias.detach()
    H = stats.gram.to(weight.device) if stats.gram is not None else hessian(stats.sample.to(weight.device))
    H = damped(H, config.damp)

    def built(codes=None):
        """``(calibration output error, module)`` of the current scale with ``codes`` (None: nearest codes)."""
        module = method.build(weight, scale, base_config, grid, bias)
        if codes is not None:
            module.set_codes(codes)
        return output_error(weight, module.dequantized_weight(), H), module

    best = current = built()
    for _ in range(config.rounds):
        codes = gptq_codes(weight, current[1].scale_matrix(), grid, H, config.lazy_block, config.act_order)
        current = built(codes)
        best = min(best, current, key=lambda c: c[0])
        if config.refit_steps == 0:
            break  # the scales stay: another pass would pick the same codes
        refit(weight, scale, codes, grid, H, config.refit_steps, config.refit_lr)
        current = built(codes)
        best = min(best, current, key=lambda c: c[0])
    return best[1], layer_report(name, weight, best[1])


register_handler(LordsGPTQConfig)(quantize_gptq)
register_handler(BlockwiseGPTQConfig)(quantize_gptq)
