"""Algorithm 1 (PTQ refine) as a LightningModule, so Lightning gives it checkpoints, resume and logging.

The module's parameters are every selected layer's scales (``LowRankScale`` B, A for LoRDS, ``BlockScale``
for block-wise), initialised as the library does. One ``training_step`` is one Algorithm-1 iteration on
every layer: re-pick ``Q = nearest_code(W ⊘ S)`` with the scales fixed, then one Adam step on the sum of the
per-layer objectives (Adam is per-parameter and each layer's loss touches only its own scales, so this is
per-layer Adam, as in ``lords.refine.refine``, which stays the reference). The best iterate per layer is
kept, the start included. ``write_back`` swaps the model's linears for ``LoRDSLinear`` / ``BlockLinear``.
"""
from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import Dataset

from lords.blockwise import block_absmax, quantize_with_scale
from lords.config import LordsConfig
from lords.grids import make_grid
from lords.lowrank import svd_init
from lords.quantize import build_block_linear, build_lords_linear, select_linears
from lords.refine import BlockScale, LayerStats, LowRankScale, objective_fn



class RefineLayer(nn.Module):
    """One layer's refinement state: trainable scales; buffers ``weight (n, m)``, ``grid``, the best iterate."""

    def __init__(self, name: str, linear: nn.Linear, config, stats: LayerStats | None):
        super().__init__()
        w = linear.weight.detach().float()
        n, m = w.shape
        self.name, self.config = name, config
        self.bias = None if linear.bias is None else linear.bias.detach().clone()
        # Not persistent: rebuilt from the model on resume, so checkpoints hold only scales and optimiser state.
        self.register_buffer("weight", w.clone(), persistent=False)
        self.register_buffer("grid", make_grid(config.grid, config.bits).float(), persistent=False)
        if isinstance(config, LordsConfig):
            self.scale = LowRankScale(*svd_init(w, config.block_size, config.rank, where=name))
            self.rank = self.scale.B.shape[1]
        else:
            self.rank = None
            self.scale = BlockScale(block_absmax(w, config.block_size), m, config.block_size)
        for i, p in enumerate(self.scale.parameters()):
            self.register_buffer(f"best_{i}", p.detach().clone())
        self.register_buffer("best_loss", torch.tensor(float("inf")))
        self.register_buffer("best_step", torch.tensor(-1))
        # Calibration statistics as buffers, so they follow the module to its device.
        self.register_buffer("diag", None if stats is None else stats.diag.float().clone(), persistent=False)
        self.register_buffer("sample", None if stats is None or stats.sample is None else stats.sample.float().clone(),
                             persistent=False)

    def loss(self) -> torch.Tensor:
        """The objective at the current scales, codes re-picked first (no gradient through the pick)."""
        S = self.scale()
        with torch.no_grad():
            values = self.grid[quantize_with_scale(self.weight, S, self.grid).long()]
        stats = None if self.diag is None else LayerStats(self.diag, self.sample)
        return objective_fn(self.config.refine.objective, stats, self.weight.shape[1])(self.weight - S * values)

    @torch.no_grad()
    def track(self, value: torch.Tensor, step: int) -> None:
        if value < self.best_loss:
            self.best_loss.copy_(value)
            self.best_step.fill_(step)
            for i, p in enumerate(self.scale.parameters()):
                getattr(self, f"best_{i}").copy_(p)

    @torch.no_grad()
    def restore_best(self) -> None:
        for i, p in enumerate(self.scale.parameters()):
            p.copy_(getattr(self, f"best_{i}"))

    @torch.no_grad()
    def build_module(self) -> nn.Module:
        """The quantized module at the current scales (call ``restore_best`` first)."""
        w = self.weight
        if isinstance(self.scale, LowRankScale):
            B, A = self.scale.B.detach(), self.scale.A.detach()
            codes = quantize_with_scale(w, B @ A, self.grid)
            return build_lords_linear(B, A, codes, self.config, self.grid, self.bias)
        return build_block_linear(w, self.scale.scales.detach(), self.config, self.grid, self.bias)


class StepDataset(Dataset):
    """``steps`` dummy items: Algorithm 1 needs no batches (its data is in the layers' statistics).
    The stage uses one item per epoch, so every checkpoint ends an epoch and resume needs no loader state."""

    def __init__(self, steps: int):
        self.steps = steps

    def __len__(self):
        return self.steps

    def __getitem__(self, i):
        return i


class PTQRefineModule(L.LightningModule):
    """All selected layers' scales as parameters; ``plan`` is ``[(LordsConfig|BlockwiseConfig, filter_fn)]``."""

    def __init__(self, model: nn.Module, plan, stats: dict[str, LayerStats] | None = None, lr: float | None = None):
        super().__init__()
        self.model = [model]  # a list: the float model is not a submodule (not trained, not checkpointed)
        layers, self.names = {}, []
        for config, filter_fn in plan:
            if config.refine is None:
                raise ValueError("PTQRefineModule needs quant.refine settings")
            for name, linear in select_linears(model, config, filter_fn).items():
                layers[name.replace(".", "__")] = RefineLayer(name, linear, config,
                                                              None if stats is None else stats.get(name))
                self.names.append(name)
        self.layers = nn.ModuleDict(layers)
        self.lr = lr or plan[0][0].refine.lr

    def training_step(self, batch, batch_idx):
        total = 0.0
        for layer in self.layers.values():
            loss = layer.loss()
            layer.track(loss.detach(), self.global_step)
            total = total + loss
        self.log("refine/loss", total.detach(), prog_bar=True)
        return total

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    @torch.no_grad()
    def finish(self) -> dict[str, float]:
        """Score the final iterate too (Algorithm 1 scores T+1 points), restore each layer's best."""
        for layer in self.layers.values():
            layer.track(layer.loss(), self.global_step)
            layer.restore_best()
        return {"refine_loss": float(sum(l.best_loss for l in self.layers.values())),
                "refine_steps": int(self.global_step)}

    @torch.no_grad()
    def write_back(self, model: nn.Module | None = None) -> dict[str, float]:
        """Swap ``model``'s selected linears for quantized modules; returns squared errors for the report."""
        model = model or self.model[0]
        sq_err = sq_norm = 0.0
        floats = 0
        for key, layer in self.layers.items():
            module = layer.build_module()
            sq_err += float((layer.weight - module.dequantized_weight()).pow(2).sum())
            sq_norm += float(layer.weight.pow(2).sum())
            floats += module.float_params()
            parent, _, child = layer.name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.to(layer.weight.device))
        return {"weight_rel_error": (sq_err / max(sq_norm, 1e-30)) ** 0.5, "float_params": floats,
                "layers": len(self.layers)}
