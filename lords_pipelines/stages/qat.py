"""QAT stage: latent weights and the quant config's scales (LoRDS ``B, A`` or block scales) trained jointly through
the rounding (straight-through estimator, ``lords.QATConfig``) on masked next-token loss; converted to the quantized
layers by the same config (its ``scale_dtype`` included) and saved at the end.

    python -m lords_pipelines.stages.qat model=smollm2-135m quant.bits=2 trainer.max_steps=200
"""

from __future__ import annotations

import time
from typing import Any

from lords.errors import ConfigError
from lords_pipelines.stages.common import apply_backend, calibration_for, finish_run, start_run, storage_metrics
from lords_pipelines.stages.settings import RunSettings, settings_from_cfg


def run(cfg) -> tuple[dict[str, Any], dict[str, Any]]:
    s: RunSettings = cfg if isinstance(cfg, RunSettings) else settings_from_cfg(cfg)
    if s.quant is None:
        raise ConfigError("quant: QAT needs a quantization config (quant=lords, nf, lords_mixed, ...)")
    from lords_pipelines.stages.datamodule import LordsDataModule
    from lords_pipelines.stages.distributed import structure_of, trained_model
    from lords_pipelines.stages.lit_train import QATModule
    from lords_pipelines.stages.training import fit_metrics, make_trainer, resume_path

    out, model, tok, logger = start_run(s)
    dm = LordsDataModule(s.data, tok, kind=s.stage.data)
    # A quant config with a calibrated refinement starts from that PTQ model: calibration tokens from data's
    # calibration source (the first calib_tokens of the training text in the QAT table).
    module = QATModule(
        model,
        s.quant,
        s.stage.lr_weight,
        s.stage.lr_scale,
        s.stage.weight_decay,
        checkpoint_blocks=s.trainer.activation_checkpointing,
        calib_ids=calibration_for(s, tok),
        scale_step=s.stage.scale_step,
    )
    trainer = make_trainer(s, out, logger, frozen_buffers=True)
    skeleton = structure_of(module.model) if s.trainer.strategy == "fsdp" else None
    t = time.time()
    trainer.fit(module, datamodule=dm, ckpt_path=resume_path(s, out))
    metrics: dict[str, Any] = fit_metrics(trainer, t, module.trainable_floats())
    model = trained_model(trainer, module.model, skeleton)  # plain and whole on rank zero, None elsewhere
    if model is None:
        return metrics, {"module": module, "trainer": trainer}
    model = apply_backend(module.convert(model), s.trainer.backend)
    metrics.update(storage_metrics(model))
    finish_run(model, tok, s, out, logger, metrics)
    return metrics, {"model": model, "tokenizer": tok, "module": module, "trainer": trainer}


if __name__ == "__main__":
    from lords_pipelines.stages.launch import launch

    launch("qat", run)
