"""The Lightning Trainer every training stage uses: validated trainer settings, the run's logger,
checkpoints under ``<out_dir>/checkpoints`` (``last.ckpt`` kept) and resume (``trainer.resume``)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from lords.errors import ConfigError
from lords_pipelines.stages.settings import RunSettings


def resume_path(s: RunSettings, out: Path) -> str | None:
    """``trainer.resume``: null (fresh), 'last' (this out_dir's last.ckpt, fresh if none) or a .ckpt path."""
    r = s.trainer.resume
    if r is None:
        return None
    if r == "last":
        last = out / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(r).is_file():
        raise ConfigError(f"trainer.resume={r!r}: no such checkpoint")
    return r


def batch_tokens(batch) -> int | None:
    """Tokens in a training batch: its attention mask's ones, else its ``input_ids``; None for batches that are not
    token dicts (the refine stage's 1-D step indices)."""
    if not isinstance(batch, dict):
        return None
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    ids = batch.get("input_ids")
    return None if ids is None else int(ids.numel())


class Throughput(L.Callback):
    """Steady-state training speed: tokens (attention-masked, all ranks) per second after ``warmup`` steps, the
    first ones (compilation, allocator growth) left out; ``tokens_per_s`` is None when too few steps ran.
    ``peak_bytes``: this rank's peak CUDA memory during fit (None off CUDA), the cost model's check."""

    def __init__(self, warmup: int = 5):
        self.warmup, self.start, self.tokens, self.tokens_per_s = warmup, None, 0, None
        self.peak_bytes = None

    def on_train_start(self, trainer, pl_module):
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_end(self, trainer, pl_module):
        import torch

        if torch.cuda.is_available():
            self.peak_bytes = torch.cuda.max_memory_allocated()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import time

        import torch

        step = trainer.global_step
        if step == self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start, self.tokens = time.perf_counter(), 0
        elif step > self.warmup and self.start is not None:
            tokens = batch_tokens(batch)
            if tokens is None:  # not token batches (the refine stage's step indices): no tokens/s to report
                self.start = None
                return
            self.tokens += tokens * trainer.world_size
            if step == trainer.max_steps:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.tokens_per_s = self.tokens / (time.perf_counter() - self.start)


def fit_metrics(trainer: L.Trainer, started: float, trainable_floats: int) -> dict:
    """What a training stage reports after ``trainer.fit``: wall seconds since ``started``, the :class:`Throughput`
    callback's steady tokens/s and this rank's peak CUDA memory, the trainable floats and the steps taken."""
    import time

    clock = next((c for c in trainer.callbacks if isinstance(c, Throughput)), None)
    return {
        "train_seconds": time.time() - started,
        "train_tokens_per_s": clock and clock.tokens_per_s,
        "trainable_floats": trainable_floats,
        "train_steps": trainer.global_step,
        "peak_gpu_bytes": clock and clock.peak_bytes,
    }


def make_trainer(
    s: RunSettings, out: Path, logger, max_steps: int | None = None, frozen_buffers: bool = False
) -> L.Trainer:
    """The stage's Trainer; ``trainer.strategy=fsdp`` becomes FSDP2 through Lightning (``.distributed``);
    ``frozen_buffers``: no step writes a buffer (QAT, PEFT), so DDP does not re-broadcast them every step."""
    from lords_pipelines.stages.distributed import strategy_for

    kw = s.trainer.trainer_kwargs()
    kw["strategy"] = strategy_for(kw["strategy"], kw["accelerator"], kw["devices"], frozen_buffers)
    if max_steps is not None:
        kw["max_steps"] = max_steps
    fast = bool(kw["fast_dev_run"])
    callbacks = [Throughput()]
    if not fast:
        callbacks.append(
            ModelCheckpoint(
                dirpath=out / "checkpoints",
                save_last=True,
                save_top_k=0,
                every_n_train_steps=s.trainer.checkpoint_every_n_steps,
            )
        )
    return L.Trainer(
        **kw,
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        enable_checkpointing=not fast,
        default_root_dir=str(out),
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
