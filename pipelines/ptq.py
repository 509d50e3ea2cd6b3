"""PTQ stage: the library's ``quantize_`` by the ``quant`` group (its Algorithm 1 when ``quant.refine`` is set),
then perplexity and lm-eval; writes ``<out_dir>/metrics.json`` and the quantized checkpoint.

    python -m pipelines.ptq model=smollm2-135m quant=lords quant.bits=3
    python -m pipelines.ptq --multirun model=tiny-llama quant=lords,nf quant.bits=3,4 quant.block_size=32,64
"""
from __future__ import annotations

import time
from typing import Any

import hydra
import torch

from .common import (apply_backend, bits_per_weight, device_for, finish_logger, load_model, make_logger,
                     finished_metrics, out_dir_of, quantize_model, save_checkpoint, write_metrics)
from .evaluation import evaluate
from .settings import RunSettings, settings_from_cfg, settings_or_exit


def quant_metrics(report, model, seconds: float) -> dict[str, Any]:
    return {"weight_rel_error": report.rel_error if report.layers else 0.0, "frob_error": report.frob_error,
            "float_params": report.float_params, "bits_per_weight": bits_per_weight(model),
            "quant_seconds": seconds, "layers": len(report.layers)}


def run(cfg) -> tuple[dict[str, Any], dict[str, Any]]:
    s: RunSettings = cfg if isinstance(cfg, RunSettings) else settings_from_cfg(cfg)
    torch.manual_seed(s.seed)
    out = out_dir_of(s)
    done = finished_metrics(out, s)
    if done is not None:
        print(f"{out}: finished earlier with the same settings, skipped")
        return done, {}
    model, tok = load_model(s.model, s.seed, device_for(s.trainer.accelerator))
    logger = make_logger(s, out)
    calib = None
    if s.quant.method != "none" and s.quant.refine is not None and s.quant.refine.objective != "weight":
        from .datamodule import calibration_ids

        calib = calibration_ids(s.data, tok)
    t = time.time()
    report = quantize_model(model, s.quant, calib, journal=out / "journal" if s.stage.journal else None)
    metrics = quant_metrics(report, model, time.time() - t)
    apply_backend(model, s.trainer.backend)
    metrics.update(evaluate(model, tok, s.eval))
    ckpt = save_checkpoint(model, s, out) if s.stage.save else None
    metrics["checkpoint"] = None if ckpt is None else str(ckpt)
    write_metrics(out, s, metrics)
    finish_logger(logger, metrics)
    return metrics, {"model": model, "tokenizer": tok, "report": report}


@hydra.main(version_base="1.3", config_path="../conf", config_name="ptq")
def main(cfg) -> None:
    run(settings_or_exit(cfg))


if __name__ == "__main__":
    main()
