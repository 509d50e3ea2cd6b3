"""Eval stage: perplexity and lm-eval zero-shot accuracy of a quantized checkpoint, of the model quantized on
the fly by the ``quant`` group, or of the float model (``quant=none``).

    python -m lords_pipelines.stages.eval model=smollm2-135m stage.checkpoint=outputs/runs/ptq/<run>/quantized \
        eval.tasks=[lords_cloze,lords_unicode]
    python -m lords_pipelines.stages.eval model=smollm2-135m stage.checkpoint=<base folder> stage.adapter=<peft run>/lords_adapter
    python -m lords_pipelines.stages.eval model=llama3-8b quant=none trainer=gpu eval.tasks=[arc_easy,piqa]   # online
"""

from __future__ import annotations

from typing import Any

from lords.checkpoint import load_quantized
from lords_pipelines.stages.common import (
    apply_backend,
    calibration_for,
    finish_run,
    quantize_model,
    start_run,
    storage_metrics,
)
from lords_pipelines.stages.settings import RunSettings, settings_from_cfg


def run(cfg) -> tuple[dict[str, Any], dict[str, Any]]:
    s: RunSettings = cfg if isinstance(cfg, RunSettings) else settings_from_cfg(cfg)
    out, model, tok, logger = start_run(s)
    if s.stage.checkpoint:
        model, _ = load_quantized(s.stage.checkpoint, model)
    if s.stage.adapter:
        from lords.errors import ConfigError
        from lords_pipelines.adapters import load_adapter

        if not s.stage.checkpoint:
            raise ConfigError("stage.adapter needs stage.checkpoint: the base lords folder it was trained on")
        model = load_adapter(model, s.stage.adapter)
    elif s.quant is not None:
        quantize_model(model, s.quant, calibration_for(s, tok))
    apply_backend(model, s.trainer.backend)
    metrics: dict[str, Any] = storage_metrics(model)
    finish_run(model, tok, s, out, logger, metrics, checkpoint=False)
    return metrics, {"model": model, "tokenizer": tok}


if __name__ == "__main__":
    from lords_pipelines.stages.launch import launch

    launch("eval", run)
