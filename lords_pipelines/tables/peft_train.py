"""One PEFT training run for the table: ``lit_train.PEFTModule`` (AdamW on what is marked trainable, masked
next-token loss) under a plain Lightning ``Trainer`` (no logger, no checkpoint, no validation loop: the table
scores validation and test itself after training), counting the tokens that carried a loss."""

from __future__ import annotations

import time

import lightning as L
import torch
from torch import nn

from lords_pipelines.stages.distributed import trained_model
from lords_pipelines.stages.lit_train import PEFTModule
from lords_pipelines.tables.peft_tasks import loader


class TokenCounter(L.Callback):
    """Tokens seen (attention mask) and tokens scored (labels other than −100) over the training batches."""

    def __init__(self):
        self.tokens = self.scored = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.tokens += int(batch["attention_mask"].sum())
        self.scored += int((batch["labels"][:, 1:] != -100).sum())


def train(
    model: nn.Module,
    items: list,
    tok,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    precision: str = "32-true",
    weight_decay: float = 0.0,
) -> dict:
    """Train ``model`` in place for ``steps`` optimizer steps over shuffled ``items`` (order from ``seed``), left on
    its device; returns ``{steps, tokens, loss_tokens, train_seconds, final_loss}``."""
    L.seed_everything(seed, verbose=False)
    device = next(model.parameters()).device
    module = PEFTModule(model, lr, weight_decay)
    counter = TokenCounter()
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[counter],
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    start = time.time()
    trainer.fit(module, train_dataloaders=loader(items, tok, batch_size, shuffle=True, seed=seed))
    loss = trainer.callback_metrics.get("train/loss")
    trained_model(trainer, model, None).eval()  # back where it trained (Lightning's teardown moves it to the CPU)
    return {
        "steps": trainer.global_step,
        "tokens": counter.tokens,
        "loss_tokens": counter.scored,
        "train_seconds": time.time() - start,
        "final_loss": None if loss is None else float(loss),
    }


def codes_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The packed codes ``qweight`` of every quantized module (a copy), to check that PEFT left them alone."""
    from lords.linear import QuantizedLinear

    return {n: m.qweight.detach().clone() for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
