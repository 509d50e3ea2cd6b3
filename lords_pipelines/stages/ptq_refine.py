"""PTQ-refine stage: Algorithm 1 as a Lightning fit (``PTQRefineModule``), resumable from its checkpoints;
then the refined layers are written back, evaluated and saved as the library's quantized checkpoint.

    python -m lords_pipelines.stages.ptq_refine model=smollm2-135m quant.bits=3 quant.refine.steps=100
    python -m lords_pipelines.stages.ptq_refine ... out_dir=outputs/runs/r1 trainer.resume=last     # resume after a stop
"""

from __future__ import annotations

import time
import warnings
from typing import Any

from torch.utils.data import DataLoader

from lords import calibration_stats
from lords.errors import ConfigError
from lords_pipelines.stages.common import apply_backend, calibration_for, finish_run, start_run, storage_metrics
from lords_pipelines.stages.settings import RunSettings, settings_from_cfg


def run(cfg) -> tuple[dict[str, Any], dict[str, Any]]:
    s: RunSettings = cfg if isinstance(cfg, RunSettings) else settings_from_cfg(cfg)
    if s.quant is None or any(getattr(leaf, "refine", None) is None for leaf in s.quant.leaves()):
        raise ConfigError("quant.refine: the ptq_refine stage needs a quantizer with refine settings")
    from lords_pipelines.stages.lit_refine import PTQRefineModule, StepDataset
    from lords_pipelines.stages.training import make_trainer, resume_path

    out, model, tok, logger = start_run(s)
    calib = calibration_for(s, tok)
    config = s.quant.resolve(model, calib)  # e.g. the sensitivity bit allocation, measured on the float model
    stats = calibration_stats(model, config, calib)
    module = PTQRefineModule(model, config, stats)
    model.lords_config = config.stored_config
    steps = s.quant.leaves()[0].refine.steps
    trainer = make_trainer(s, out, logger, max_steps=steps)
    # Checkpoints hold the state after each Algorithm-1 step, which is exactly what resume needs.
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    t = time.time()
    trainer.fit(module, train_dataloaders=DataLoader(StepDataset(1), batch_size=1), ckpt_path=resume_path(s, out))
    module.to(trainer.strategy.root_device)  # Lightning's teardown moved the refiners to the CPU: build on the GPU
    metrics: dict[str, Any] = module.finish()
    metrics.update(module.write_back(model))
    apply_backend(model, s.trainer.backend)
    metrics.update(quant_seconds=time.time() - t, **storage_metrics(model))
    finish_run(model, tok, s, out, logger, metrics)
    return metrics, {"model": model, "tokenizer": tok, "module": module, "trainer": trainer}


if __name__ == "__main__":
    from lords_pipelines.stages.launch import launch

    launch("ptq_refine", run)
