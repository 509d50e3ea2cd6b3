"""PTQ stage: the library's ``quantize_`` by the ``quant`` group (its Algorithm 1 when ``quant.refine`` is set),
then perplexity and lm-eval; writes ``<out_dir>/metrics.json`` and the quantized checkpoint.

    python -m lords_pipelines.ptq model=smollm2-135m quant=lords quant.bits=3
    python -m lords_pipelines.ptq --multirun model=tiny-llama quant=lords,nf quant.bits=3,4 quant.block_size=32,64
"""
from __future__ import annotations

import time
from typing import Any

import hydra

from .common import (apply_backend, bits_per_weight, calibration_for, finish_run, finished_metrics, out_dir_of,
                     quantize_model, start_run)
from .settings import RunSettings, settings_from_cfg, settings_or_exit


def quant_metrics(report, model, seconds: float) -> dict[str, Any]:
    return {"weight_rel_error": report.rel_error if report.layers else 0.0, "frob_error": report.frob_error,
            "float_params": report.float_params, "bits_per_weight": bits_per_weight(model),
            "quant_seconds": seconds, "layers": len(report.layers)}


def run(cfg) -> tuple[dict[str, Any], dict[str, Any]]:
    s: RunSettings = cfg if isinstance(cfg, RunSettings) else settings_from_cfg(cfg)
    done = finished_metrics(out_dir_of(s), s)
    if done is not None:
        print(f"{out_dir_of(s)}: finished earlier with the same settings, skipped")
        return done, {}
    out, model, tok, logger = start_run(s)
    t = time.time()
    report = quantize_model(model, s.quant, calibration_for(s, tok),
                            journal=out / "journal" if s.stage.journal else None)
    metrics = quant_metrics(report, model, time.time() - t)
    apply_backend(model, s.trainer.backend)
    finish_run(model, tok, s, out, logger, metrics)
    return metrics, {"model": model, "tokenizer": tok, "report": report}


@hydra.main(version_base="1.3", config_path="../conf", config_name="ptq")
def main(cfg) -> None:
    run(settings_or_exit(cfg))


if __name__ == "__main__":
    main()
