"""PTQ stage: the library's ``quantize_`` by the ``quant`` group (its Algorithm 1 when ``quant.refine`` is set),
then perplexity and lm-eval; writes ``<out_dir>/metrics.json`` and the quantized checkpoint.

    python -m lords_pipelines.stages.ptq model=smollm2-135m quant=lords quant.bits=3
    python -m lords_pipelines.stages.ptq --multirun model=tiny-llama quant=lords,nf quant.bits=3,4 quant.block_size=32,64
"""

from __future__ import annotations

import time
from typing import Any

from lords import QuantizeReport
from lords_pipelines.stages.common import (
    apply_backend,
    calibration_for,
    finish_run,
    finished_metrics,
    out_dir_of,
    quantize_model,
    start_run,
    storage_metrics,
)
from lords_pipelines.stages.settings import RunSettings, settings_from_cfg


def quant_metrics(report, model, seconds: float) -> dict[str, Any]:
    return {
        "weight_rel_error": report.rel_error if report.layers else 0.0,
        "frob_error": report.frob_error,
        "float_params": report.float_params,
        **storage_metrics(model),
        "quant_seconds": seconds,
        "layers": len(report.layers),
    }


def journal_dir(out, s: RunSettings):
    """``<out>/journal/<digest>``: a rerun with the same quant config, model, data and seed resumes there; any other
    starts anew (the library's journal also checks the weights and calibration tokens it is handed)."""
    import hashlib
    import json

    d = s.to_dict()
    bound = {"quant": s.quant.to_dict(), "model": d.get("model"), "data": d.get("data"), "seed": s.seed}
    digest = hashlib.sha256(json.dumps(bound, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return out / "journal" / digest


def heldout_calibration_ppl(model, tok, s: RunSettings) -> dict[str, Any]:
    """Perplexity on the calibration-source tokens right after those calibration used (``eval.heldout_calib_tokens``)."""
    if not s.eval.heldout_calib_tokens:
        return {}
    from lords.linear import cached_weights
    from lords_pipelines.data.texts import bos_id
    from lords_pipelines.evaluation.perplexity import perplexity
    from lords_pipelines.stages.datamodule import calibration_ids

    used = s.quant.calibration[0] if s.quant is not None else 0
    ids = calibration_ids(s.data, tok, s.eval.heldout_calib_tokens, offset=used)
    with cached_weights(model):
        ppl, n = perplexity(model, ids, progress="perplexity on held-out calibration text", bos=bos_id(tok))
    return {"heldout_calib_ppl": ppl, "heldout_calib_tokens": n}


def run(cfg) -> tuple[dict[str, Any], dict[str, Any]]:
    s: RunSettings = cfg if isinstance(cfg, RunSettings) else settings_from_cfg(cfg)
    done = finished_metrics(out_dir_of(s), s)
    if done is not None:
        print(f"{out_dir_of(s)}: finished earlier with the same settings, skipped")
        return done, {}
    out, model, tok, logger = start_run(s)
    reference = {}
    if s.eval.float_reference and s.eval.perplexity_tokens:
        from lords_pipelines.evaluation.scores import eval_perplexity

        reference = {"fp_ppl": eval_perplexity(model, tok, s.eval)["ppl"]}
    t = time.time()
    report = QuantizeReport()
    if s.quant is not None:
        report = quantize_model(
            model,
            s.quant,
            calibration_for(s, tok),
            progress=s.stage.progress,
            journal=journal_dir(out, s) if s.stage.journal else None,
        )
    metrics = quant_metrics(report, model, time.time() - t) | reference
    metrics.update(heldout_calibration_ppl(model, tok, s))
    apply_backend(model, s.trainer.backend)
    finish_run(model, tok, s, out, logger, metrics)
    return metrics, {"model": model, "tokenizer": tok, "report": report}


if __name__ == "__main__":
    from lords_pipelines.stages.launch import launch

    launch("ptq", run)
