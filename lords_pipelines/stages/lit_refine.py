"""Algorithm 1 (PTQ refine) as a LightningModule, so Lightning gives it checkpoints, resume and logging.

The library's own Algorithm 1 runs here, not a copy: every selected layer gets a ``lords.Refiner`` (its scales
from the method's ``init_scale``, exactly as ``quantize_`` starts them) and one ``lords.RefineAdam`` holds all
their parameters (Adam is elementwise, so one optimiser equals one per layer). One training step is one
Algorithm-1 iteration on every layer: ``Refiner.evaluate()`` then the optimiser step (manual optimisation: the
gradients are the library's explicit ones). ``finish`` scores the last iterate and restores each layer's best;
``write_back`` builds the method's layers with its ``build``. The result equals ``lords.quantize_``'s.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import Dataset

from lords import LayerStats, QuantConfig, RefineAdam, Refiner, layer_report, plan, scale_method
from lords.grids import make_grid


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
    """All selected layers' ``Refiner`` s; ``config`` is the run's quantization config (leaf or composite)."""

    def __init__(self, model: nn.Module, config: QuantConfig, stats: dict[str, LayerStats] | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.model = [model]  # a list: the float model is not a submodule (not trained, not checkpointed)
        refiners, self.leaves, self.lrs = {}, {}, set()
        for name, (linear, leaf) in plan(model, config).items():
            if getattr(leaf, "refine", None) is None:
                raise ValueError(f"{name}: the ptq_refine stage needs refine settings in the quant config")
            method = scale_method(leaf)
            weight = linear.weight.detach()
            torch.manual_seed(leaf.seed)
            scale = method.init_scale(weight, leaf, name)
            grid = make_grid(leaf.grid, leaf.bits).to(weight.device)
            refiners[name.replace(".", "__")] = Refiner(
                weight, scale, grid, leaf.refine, None if stats is None else stats.get(name)
            )
            self.leaves[name] = leaf
            self.lrs.add(leaf.refine.lr)
        if len(self.lrs) != 1:
            raise ValueError(f"the ptq_refine stage needs one refine.lr for every layer, got {sorted(self.lrs)}")
        self.refiners = nn.ModuleDict(refiners)

    def training_step(self, batch, batch_idx):
        total = sum(r.evaluate() for r in self.refiners.values())
        self.optimizers().step()
        self.log("refine/loss", total, prog_bar=True)

    def configure_optimizers(self):
        return RefineAdam([p for r in self.refiners.values() for p in r.scale.parameters()], lr=next(iter(self.lrs)))

    @torch.no_grad()
    def finish(self) -> dict[str, float]:
        """Score the final iterate too (Algorithm 1 scores T+1 points), restore each layer's best."""
        self.results = {key: r.finish() for key, r in self.refiners.items()}
        return {
            "refine_loss": float(sum(r.best_loss for r in self.results.values())),
            "refine_steps": int(self.global_step),
        }

    @torch.no_grad()
    def write_back(self, model: nn.Module | None = None) -> dict[str, float]:
        """Swap ``model``'s selected linears for the method's quantized layers; returns errors for the report."""
        model = model or self.model[0]
        reports = []
        for name, leaf in self.leaves.items():
            refiner = self.refiners[name.replace(".", "__")]
            linear = model.get_submodule(name)
            bias = None if linear.bias is None else linear.bias.detach()
            module = scale_method(leaf).build(refiner.weight, refiner.scale, leaf, refiner.grid, bias)
            reports.append(layer_report(name, refiner.weight, module))
            # where the replaced linear lives, not where the refiner does (Lightning's teardown moves the refiners)
            model.set_submodule(name, module.to(linear.weight.device))
        sq_err, sq_norm = sum(r.sq_error for r in reports), sum(r.sq_norm for r in reports)
        return {
            "weight_rel_error": (sq_err / max(sq_norm, 1e-30)) ** 0.5,
            "float_params": sum(r.float_params for r in reports),
            "layers": len(reports),
        }
