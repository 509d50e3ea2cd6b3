"""What every entry point shares: model loading, quantization by settings, metrics JSON, the logger.

Nothing here imports Lightning or wandb at module level (the PTQ stage needs neither unless asked).
"""

from __future__ import annotations

import json
import logging
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lords import QuantConfig, QuantizeReport, quantize_, storage_bits
from lords.errors import ConfigError
from lords_pipelines.stages.settings import LoggerSettings, ModelSettings, RunSettings

log = logging.getLogger("lords_pipelines")  # under Hydra: the console and <run dir>/<stage>.log
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@lru_cache(maxsize=4)
def bpe_tokenizer(vocab: int, add_bos: bool = False):
    """A byte-level BPE tokenizer with ``vocab`` entries, trained offline on Python's pydoc topics (< 1 s);
    ``add_bos``: it prepends BOS to every text, as Llama's tokenizers do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from lords_pipelines.data.texts import calibration_text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=special,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([calibration_text()[:400_000]], trainer=trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{special[0]} $A", pair=f"{special[0]} $A $B", special_tokens=[(special[0], 0)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=special[0], bos_token=special[0], pad_token=special[0], unk_token=special[0]
    )


def device_for(accelerator: str) -> str:
    """Where a stage puts the model before quantizing: this process's GPU (``LOCAL_RANK`` under DDP) for
    trainer.accelerator gpu/cuda/auto when CUDA is present, else the CPU."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def is_rank_zero() -> bool:
    """True in the process that evaluates and writes (Lightning's global rank 0; any process outside DDP)."""
    import sys

    if "lightning" not in sys.modules:
        return True
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def load_model(s: ModelSettings, seed: int = 0, device: str = "cpu"):
    """``(model, tokenizer)`` for the model settings on ``device``; the tiny Llama gets the offline BPE tokenizer."""
    model, tok = _load_model(s, seed)
    return model.to(device), tok


def _load_model(s: ModelSettings, seed: int):
    if s.name == "tiny-llama":
        from lords_pipelines.models import tiny_llama

        t = s.tiny
        tok = bpe_tokenizer(t.vocab)
        model = tiny_llama(
            seed=seed,
            hidden=t.hidden,
            layers=t.layers,
            heads=t.heads,
            kv_heads=t.kv_heads,
            intermediate=t.intermediate,
            vocab=len(tok),
        )
        return model.to(_DTYPES[s.dtype]).eval(), tok
    from lords_pipelines.models import load_model as lib_load

    return lib_load(s.name, _DTYPES[s.dtype], gguf_file=s.gguf_file)


def quantize_model(
    model: nn.Module,
    config: QuantConfig,
    calib_ids: torch.Tensor | None = None,
    progress: bool = False,
    journal: Path | None = None,
) -> QuantizeReport:
    """``lords.quantize_`` with the run's config; with ``journal``, finished layers are kept there (the
    library's ``resume_dir``) and a rerun resumes."""
    return quantize_(model, config, calib_ids=calib_ids, progress=progress, resume_dir=journal)


def apply_backend(model: nn.Module, backend: str) -> nn.Module:
    """Pick the ``LoRDSLinear`` forward for this model (an explicit per-model call, nothing process-wide).

    ``torch``: the reference; ``triton``: ``lords_kernels.use_triton``; ``auto``: Triton for CUDA inputs and
    the reference for CPU inputs when CUDA and the kernels are present, else the reference.
    """
    import importlib.util

    have_kernels = importlib.util.find_spec("triton") is not None
    if backend == "triton" and not have_kernels:
        raise ConfigError("trainer.backend='triton' needs Triton installed (pip install triton)")
    if backend == "triton" or (backend == "auto" and have_kernels and torch.cuda.is_available()):
        import lords_kernels

        return lords_kernels.use_triton(model, cpu_fallback=backend == "auto")
    from lords.linear import LoRDSLinear

    for m in model.modules():
        if isinstance(m, LoRDSLinear):
            m.set_backend("torch")
    return model


def storage_metrics(model: nn.Module) -> dict[str, float | None]:
    """``code_bits`` (average bits of a weight code) and ``bits_per_weight`` (codes plus stored scale floats)."""
    bits = storage_bits(model)
    return bits or _bnb_storage_bits(model) or {"code_bits": None, "bits_per_weight": None}


def _bnb_storage_bits(model: nn.Module) -> dict[str, float] | None:
    """The same figures for bitsandbytes 4-bit layers (the QLoRA base): 4-bit codes plus one absmax float per
    block, at the dtype bitsandbytes stores it (fp32 without double quantization); None when there are none."""
    weights = stored = 0.0
    for m in model.modules():
        state = getattr(getattr(m, "weight", None), "quant_state", None)
        if type(m).__name__ != "Linear4bit" or state is None:
            continue
        n = m.in_features * m.out_features
        absmax_bits = 8 * state.absmax.element_size() if not state.nested else 8 + 32 / 256  # nested: 8-bit + fp32/256
        weights, stored = weights + n, stored + n * (4 + absmax_bits / state.blocksize)
    return {"code_bits": 4.0, "bits_per_weight": stored / weights} if weights else None


def save_checkpoint(model: nn.Module, s: RunSettings, out_dir: Path, tokenizer=None) -> Path | None:
    """The library's quantized checkpoint in ``<out_dir>/quantized`` (uniform bits; config JSON beside it), with
    ``tokenizer`` in it: the folder appears whole."""
    from lords.checkpoint import save_quantized

    if s.quant is None:
        return None
    path = out_dir / "quantized"
    # The config as applied (resolved rules, e.g. the sensitivity allocation), else the run's.
    save_quantized(
        model,
        path,
        getattr(model, "lords_config", s.quant),
        extra={"pipeline_settings": s.to_dict()},
        tokenizer=tokenizer,
    )
    return path


def write_metrics(out_dir: Path, s: RunSettings, metrics: dict[str, Any]) -> Path:
    """``<out_dir>/metrics.json``: the metrics and the validated settings that produced them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "metrics.json"
    record = {"metrics": metrics, "settings": s.to_dict(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    from lords.integrity import atomic_write_bytes  # a temp file of its own: concurrent writers never share one

    atomic_write_bytes(path, json.dumps(record, indent=1, default=str).encode())
    return path


def finished_metrics(out_dir: Path, s: RunSettings) -> dict[str, Any] | None:
    """The metrics of a run already finished in ``out_dir`` with the very same settings, else None.

    A killed ``--multirun`` resumes by relaunching with ``hydra.sweep.dir=<its folder>``: finished jobs
    (their ``metrics.json`` is written last, atomically) are skipped, the rest run."""
    path = out_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    same = json.loads(json.dumps(record.get("settings"), default=str)) == json.loads(
        json.dumps(s.to_dict(), default=str)
    )
    return record.get("metrics") if same else None


def flat_settings(s: RunSettings) -> dict[str, Any]:
    """``{"quant.bits": 3, ...}`` for loggers."""
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = list(value) if isinstance(value, tuple) else value

    walk("", s.to_dict())
    return out


def sweep_group(out_dir: Path, s: RunSettings) -> str:
    """The wandb group: explicit ``logger.group``, else the sweep directory's name for --multirun runs."""
    if s.logger.group:
        return s.logger.group
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return f"{s.stage.name}-{Path(hc.sweep.dir).name}"
    except Exception:  # not under Hydra (tests calling run() directly): no sweep
        pass
    return s.stage.name


def make_logger(s: RunSettings, out_dir: Path):
    """A Lightning logger (wandb offline by default, csv) or None; the settings are logged as hyperparameters."""
    return open_logger(s.logger, out_dir, s.stage.name, sweep_group(out_dir, s), flat_settings(s))


def open_logger(ls: LoggerSettings, out_dir: Path, job_type: str, group: str, config: dict[str, Any]):
    """The ``logger`` group's logger for one run in ``out_dir`` (named after it), ``config`` logged as its
    hyperparameters; None for ``logger=none``."""
    if ls.kind == "none":
        return None
    if ls.kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        logger = CSVLogger(save_dir=str(out_dir), name="csv")  # version_N per (re)start: resume keeps old logs
    else:
        from lightning.pytorch.loggers import WandbLogger

        os.environ.setdefault("WANDB_SILENT", "true")
        if ls.mode == "offline":
            os.environ["WANDB_MODE"] = "offline"
        (out_dir / "wandb").mkdir(parents=True, exist_ok=True)
        logger = WandbLogger(
            project=ls.project,
            group=group,
            tags=list(ls.tags),
            save_dir=str(out_dir),
            mode=ls.mode,
            name=out_dir.name,
            job_type=job_type,
            config=config,
        )
    logger.log_hyperparams(config)
    return logger


def finish_logger(logger, metrics: dict[str, Any]) -> None:
    """Log the final metrics (numbers only), then close the run."""
    if logger is None:
        return
    logger.log_metrics({f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None})
    if type(logger).__name__ == "WandbLogger":
        logger.experiment.summary.update({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
    logger.finalize("success")
    if type(logger).__name__ == "WandbLogger":
        import wandb

        wandb.finish()


def start_run(s: RunSettings):
    """What every stage starts with: the seed, ``out_dir``, the model and tokenizer on the trainer's device, the
    logger. Returns ``(out, model, tokenizer, logger)``."""
    torch.manual_seed(s.seed)
    out = out_dir_of(s)
    log.info(
        "%s run in %s: model %s, quant %s",
        s.stage.name,
        out,
        s.model.name,
        "float" if s.quant is None else json.dumps(s.quant.to_dict()),
    )
    model, tok = load_model(s.model, s.seed, device_for(s.trainer.accelerator))
    return out, model, tok, make_logger(s, out)


def calibration_for(s: RunSettings, tok) -> torch.Tensor | None:
    """Calibration token ids when the ``quant`` config's refinement objective needs activations, else None."""
    if s.quant is None or not s.quant.needs_calibration:
        return None
    from lords_pipelines.stages.datamodule import calibration_ids

    return calibration_ids(s.data, tok, s.quant.calibration[0])


def finish_run(
    model: nn.Module,
    tok,
    s: RunSettings,
    out: Path,
    logger,
    metrics: dict[str, Any],
    checkpoint: bool = True,
    save=None,
) -> dict[str, Any]:
    """What every stage ends with: evaluation, the checkpoint (``save()`` or the library's, when
    ``stage.save``; none at all when ``checkpoint`` is False), ``metrics.json``, the logger's summary."""
    from lords_pipelines.evaluation.scores import evaluate

    if not is_rank_zero():  # every DDP rank trained; one evaluates and writes
        return metrics
    metrics.update(evaluate(model, tok, s.eval))
    if checkpoint:
        # the folder is a whole model with its tokenizer: from_pretrained, lm-eval, `lords eval`
        ckpt = (save or (lambda: save_checkpoint(model, s, out, tok)))() if s.stage.save else None
        metrics["checkpoint"] = None if ckpt is None else str(ckpt)
    write_metrics(out, s, metrics)
    log.info("metrics: %s", json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}))
    log.info("wrote %s", out / "metrics.json")
    finish_logger(logger, metrics)
    return metrics


def out_dir_of(s: RunSettings) -> Path:
    path = Path(s.out_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path
