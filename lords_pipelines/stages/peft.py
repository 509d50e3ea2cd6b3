"""PEFT stage: quantize (or load a quantized checkpoint), then fine-tune on prompt/answer pairs with loss on
answers only. The methods are the PEFT table's (``lords_pipelines.peft_methods``, one meaning each):
``stage.method=lords_peft`` trains only ``B, A`` (the model stays ``Q ⊙ BA``: nothing to merge); ``qlora``,
``loftq`` and ``qpissa`` train an additive LoRA (peft) on an NF base at the quant group's bits and block size
(bitsandbytes ``Linear4bit`` at 4 bits), at matched trainable floats.

    python -m lords_pipelines.stages.peft model=smollm2-135m quant.bits=4                      # LoRDS PEFT
    python -m lords_pipelines.stages.peft model=smollm2-135m quant=nf stage.method=qlora       # QLoRA baseline
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lords.checkpoint import load_quantized
from lords.errors import ConfigError
from lords_pipelines.evaluation.scores import answer_metrics
from lords_pipelines.peft_methods import LORA_METHODS
from lords_pipelines.stages.common import (
    apply_backend,
    calibration_for,
    finish_run,
    quantize_model,
    start_run,
    storage_metrics,
)
from lords_pipelines.stages.settings import RunSettings, settings_from_cfg


def prepare(model, tok, s: RunSettings):
    """Quantize ``model`` (or load ``stage.init_checkpoint`` into it) and mark what PEFT trains; returns
    ``(model, trainable floats)``."""
    from lords_pipelines.peft_methods import prepare as prepare_lora
    from lords_pipelines.stages.lit_train import prepare_lords_peft

    st = s.stage
    methods = {leaf.method for leaf in s.quant.leaves()} if s.quant is not None else {"none"}
    if st.method == "lords_peft" and methods != {"lords"}:
        raise ConfigError(f"quant: stage.method=lords_peft needs LoRDS layers (quant=lords), got {sorted(methods)}")
    if st.method in LORA_METHODS:
        if methods != {"blockwise"} or len(s.quant.leaves()) != 1:
            raise ConfigError(
                f"quant: stage.method={st.method} takes its base's bits and block size from a "
                f"block-wise quant group (quant=nf), got {sorted(methods)}"
            )
        leaf = s.quant.leaves()[0]
        p = prepare_lora(
            model, st.method, bits=leaf.bits, block_size=leaf.block_size, seed=s.seed, alpha_ratio=st.lora_alpha_ratio
        )
        return p.model, p.trainable_floats
    if st.init_checkpoint:
        model, _ = load_quantized(st.init_checkpoint, model)
    else:
        quantize_model(model, s.quant, calibration_for(s, tok))
    return model, prepare_lords_peft(model)


def save_adapter(model, path: Path) -> Path:
    model.save_pretrained(str(path))
    return path


def _saver(model, s: RunSettings, out: Path):
    if s.stage.method in LORA_METHODS:
        return lambda: save_adapter(model, out / f"{s.stage.method}_adapter")
    if s.stage.init_checkpoint:
        from lords.adapter import save_adapter as save_lords_adapter

        return lambda: save_lords_adapter(model, out / "lords_adapter")
    return None


def run(cfg) -> tuple[dict[str, Any], dict[str, Any]]:
    s: RunSettings = cfg if isinstance(cfg, RunSettings) else settings_from_cfg(cfg)
    from lords_pipelines.stages.datamodule import LordsDataModule
    from lords_pipelines.stages.distributed import structure_of, trained_model
    from lords_pipelines.stages.lit_train import PEFTModule
    from lords_pipelines.stages.training import fit_metrics, make_trainer, resume_path

    out, model, tok, logger = start_run(s)
    model, trainable = prepare(model, tok, s)
    apply_backend(model, s.trainer.backend)
    dm = LordsDataModule(s.data, tok, kind=s.stage.data)
    dm.setup("fit")
    pairs = s.stage.data == "finetune"  # answer metrics score prompt/answer pairs; text windows have no answers
    before = answer_metrics(model, dm.val_dataloader()) if pairs else {}
    module = PEFTModule(model, s.stage.lr, s.stage.weight_decay, checkpoint_blocks=s.trainer.activation_checkpointing)
    trainer = make_trainer(s, out, logger, frozen_buffers=True)
    skeleton = structure_of(model) if s.trainer.strategy == "fsdp" else None
    t = time.time()
    trainer.fit(module, datamodule=dm, ckpt_path=resume_path(s, out))
    metrics: dict[str, Any] = fit_metrics(trainer, t, trainable)
    model = trained_model(trainer, module.model, skeleton)  # plain and whole on rank zero, None elsewhere
    if model is None:
        return metrics, {"module": module, "trainer": trainer}
    metrics.update(storage_metrics(model))
    metrics.update({f"before/{k}": v for k, v in before.items()})
    metrics.update(answer_metrics(model, dm.val_dataloader()) if pairs else {})
    # LoRDS on a base folder (stage.init_checkpoint) saves only B, A and the base's hash; LoRDS quantized on the fly
    # saves the library's checkpoint (still Q ⊙ BA, nothing merged); a LoRA method saves its adapter (peft format).
    finish_run(model, tok, s, out, logger, metrics, save=_saver(model, s, out))
    return metrics, {"model": model, "tokenizer": tok, "module": module, "trainer": trainer}


if __name__ == "__main__":
    from lords_pipelines.stages.launch import launch

    launch("peft", run)
