"""LightningModules that train a causal LM on masked next-token loss: QAT and PEFT (LoRDS, QLoRA baseline).

- ``QATModule``: ``quantize_(model, QATConfig(config, "prepare"))`` swaps linears for ``QATLinear`` (latent ``W`` +
  the method's scales, STE through the rounding); only those are trained (two learning rates); ``convert`` packs
  them with ``QATConfig(config, "convert")``.
- ``PEFTModule``: the model is already quantized; LoRDS trains only ``B, A``
  (``lords.mark_only_scales_trainable``); the QLoRA baseline (``add_lora``) trains an additive LoRA
  through ``peft`` on a ``BlockLinear`` base, registered as a custom module of peft's ``lora.Linear``.
Batches come from ``LordsDataModule`` (labels −100 where no loss is taken).
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from lords import QATConfig, QATLinear, QuantConfig, mark_only_scales_trainable, quantize_
from lords.errors import ConfigError
from lords.scale_steps import scale_param_groups


class CausalLMModule(L.LightningModule):
    """``model(input_ids, attention_mask, labels).loss`` on train/val batches; AdamW on ``param_groups``.

    The groups are kept by parameter name and resolved when the optimizer is made, after ``configure_model``:
    FSDP (``trainer.strategy=fsdp``) replaces every parameter by its shard there. The logged ``train/loss`` is the
    mean over ranks, the loss of the global batch (one process, DDP and FSDP log the same curve)."""

    def __init__(
        self, model: nn.Module, param_groups: list[dict], weight_decay: float = 0.0, checkpoint_blocks: bool = False
    ):
        super().__init__()
        self.model = model.train()
        if checkpoint_blocks:
            enable_block_checkpointing(model)
        names = {id(p): n for n, p in model.named_parameters()}
        self.param_groups = [{**g, "params": [names[id(p)] for p in g["params"]]} for g in param_groups]
        self.weight_decay = weight_decay

    def configure_model(self):
        """Under ``ModelParallelStrategy`` (``trainer.strategy=fsdp``): FSDP2, one unit per decoder block."""
        from lords_pipelines.stages.distributed import is_sharded, shard

        if self.device_mesh is not None and not is_sharded(self.model):
            shard(self.model, self.device_mesh)

    def on_fit_start(self):
        """Every rank starts from rank 0's buffers (packed codes, grids): DDP does not broadcast them before each step
        here (``make_trainer(frozen_buffers=True)``) nor, then, when it wraps the model, and a rank's own quantization
        could differ from rank 0's at a tie."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for b in self.model.buffers():
                dist.broadcast(b, src=0)

    def forward(self, batch):
        return self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss

    def training_step(self, batch, batch_idx):
        loss = self(batch)
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self(batch), prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        params = dict(self.model.named_parameters())
        groups = [{**g, "params": [params[n] for n in g["params"]]} for g in self.param_groups if g["params"]]
        return torch.optim.AdamW(groups, weight_decay=self.weight_decay)

    def trainable_floats(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def enable_block_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing per decoder block through transformers' ``gradient_checkpointing_enable``
    (non-reentrant, so it composes with FSDP2): each block's forward runs again in backward."""
    if not hasattr(model, "gradient_checkpointing_enable"):
        raise ConfigError(f"trainer.activation_checkpointing: {type(model).__name__} is not a transformers model")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


class QATModule(CausalLMModule):
    """QAT of ``config``'s method: latent weights at ``lr_weight``, scales at ``lr_scale`` by the ``scale_step`` rule
    (``lords.scale_steps``: ``per_factor`` puts LoRDS's ``B`` and ``A`` each at the learning rate that makes their
    step in ``S = B·A`` a block scale's; ``shared``, one rate for all); everything else frozen."""

    def __init__(
        self,
        model: nn.Module,
        config: QuantConfig,
        lr_weight: float,
        lr_scale: float,
        weight_decay: float = 0.0,
        checkpoint_blocks: bool = False,
        calib_ids=None,
        scale_step: str = "per_factor",
    ):
        for p in model.parameters():
            p.requires_grad_(False)
        # A config with refinement starts QAT from Algorithm 1's scales (calib_ids: its calibration tokens).
        quantize_(model, QATConfig(config, "prepare"), calib_ids=calib_ids, progress=False)
        layers = [m for m in model.modules() if isinstance(m, QATLinear)]
        for m in layers:
            if m.bias is not None:
                m.bias.requires_grad_(False)  # biases stay as they are; only W and the scales train
        weights = [m.weight for m in layers]
        if lr_weight == 0:
            for w in weights:
                w.requires_grad_(False)
        groups = [
            {"params": weights if lr_weight > 0 else [], "lr": lr_weight},
            *scale_param_groups([m.scale for m in layers], lr_scale, scale_step),
        ]
        super().__init__(model, groups, weight_decay, checkpoint_blocks)
        self.config = config

    def convert(self, model: nn.Module | None = None) -> nn.Module:
        """``model`` (default: the trained one) with every ``QATLinear`` converted by the config (its storage dtype
        included)."""
        model = self.model if model is None else model
        quantize_(model, QATConfig(self.config, "convert"), progress=False)
        return model


class PEFTModule(CausalLMModule):
    """Train what is marked trainable in an already prepared model (``prepare_lords_peft`` / ``add_lora``)."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float = 0.0, checkpoint_blocks: bool = False):
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("PEFT: nothing is trainable")
        super().__init__(model, [{"params": params, "lr": lr}], weight_decay, checkpoint_blocks)


def prepare_lords_peft(model: nn.Module) -> int:
    """Freeze all but the LoRDS scales ``B, A``; returns the trainable floats."""
    return mark_only_scales_trainable(model)
