"""``quantize_(model, config)``: swap every selected layer for its quantized module, in place.

The config's type picks the handler through a registry (``lords.handlers.register_handler``): ``LordsConfig`` → LoRDS,
``BlockwiseConfig`` → block scales, ``QATConfig`` → QAT's prepare/convert. Composite configs
(``LayerwiseConfig``, ``MixedPrecisionConfig``) hand each layer its own leaf config.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import torch
from torch import nn

from .calibration import collect_stats
from .config import QuantConfig
from .errors import ConfigError, UnsupportedModuleError

# Re-exported: callers import the registry's names from lords.quantize too.
from .handlers import ScaleMethod, handler_for, layer_report, register_handler, registered, scale_method  # noqa: F401
from .layerwise import decoder_layer_index, num_decoder_layers
from .refine import LayerStats
from .refine_batched import OBJECTIVES, batchable, refine_batched
from .report import LayerReport, QuantizeReport
from .resume import LayerJournal, model_fingerprint, stats_digest, tokens_digest

AfterQuantize = Callable[[nn.Module, QuantConfig], None]
_AFTER_QUANTIZE: list[AfterQuantize] = []


def after_quantize(fn: AfterQuantize) -> AfterQuantize:
    """Register ``fn(model, stored config)`` to run at the end of every :func:`quantize_`; returns ``fn``.

    ``lords.hf`` registers the one that makes a transformers model savable with ``save_pretrained``, so this module
    knows nothing of transformers. That hook is always in place before a transformers model can exist: ``import lords``
    imports ``lords.hf`` as soon as transformers' quantizer registry loads (``lords.hf_registration``), and
    transformers' modeling code loads that registry on import. What ``quantize_`` does thus depends on the model,
    never on which packages happen to be imported."""
    if fn not in _AFTER_QUANTIZE:
        _AFTER_QUANTIZE.append(fn)
    return fn


def plan(model: nn.Module, config: QuantConfig, filter_fn=None) -> dict[str, tuple[nn.Module, QuantConfig]]:
    """``{name: (module, leaf config)}`` of the modules ``quantize_`` would replace, in model order."""
    num_layers = None
    chosen = {}
    for name, module in model.named_modules():
        if not name or (filter_fn is not None and not filter_fn(module, name)):
            continue
        if num_layers is None:
            num_layers = num_decoder_layers(model)
        leaf = config.config_for(name, decoder_layer_index(name), num_layers)
        if leaf is None:
            continue
        if registered(leaf).accepts(module, leaf):
            chosen[name] = (module, leaf)
    return chosen


def fused_params_left_in_float(model: nn.Module, config: QuantConfig, chosen: dict) -> list[str]:
    """Parameters of three or more dimensions (fused mixture-of-experts weights, experts × out × in, as
    transformers holds Mixtral's and Qwen-MoE's) that no handler takes and the config does not exclude."""
    num_layers = num_decoder_layers(model)
    found = []
    for name, p in model.named_parameters():
        module = name.rpartition(".")[0]
        if p.dim() >= 3 and module not in chosen and config.config_for(module, decoder_layer_index(module), num_layers):
            found.append(name)
    return found


def calibration_stats(
    model: nn.Module, config: QuantConfig, calib_ids: torch.Tensor | None, chosen: dict | None = None
) -> dict[str, LayerStats] | None:
    """Calibration statistics of the layers of ``plan(model, config)`` (or ``chosen``) whose refinement objective
    needs activations, from the model as it is now (float); None when no layer needs them."""
    chosen = plan(model, config) if chosen is None else chosen
    calibrated = {n: module for n, (module, leaf) in chosen.items() if leaf.needs_calibration}
    if not calibrated:
        return None
    if calib_ids is None:
        raise ConfigError("a refinement objective needs calibration activations: pass calib_ids (calibration tokens)")
    check_token_ids(calib_ids, model)
    calib_tokens, sample_tokens, seed = config.calibration
    gram = any(getattr(leaf, "needs_gram", False) for _, leaf in chosen.values() if leaf.needs_calibration)
    return collect_stats(model, calib_ids[:, :calib_tokens], calibrated, sample_tokens, seed=seed, gram=gram)


def check_token_ids(ids, model: nn.Module | None = None, vocab: int | None = None, name: str = "calib_ids") -> None:
    """``ids`` is a non-empty ``(1, T)`` integer tensor of ids below the model's vocabulary (its input embedding's
    rows, or ``vocab``); anything else is a ``ConfigError`` before a forward pass indexes past the table."""
    if (
        not isinstance(ids, torch.Tensor)
        or ids.dim() != 2
        or ids.numel() == 0
        or ids.is_floating_point()
        or ids.dtype == torch.bool
    ):
        raise ConfigError(
            f"{name} must be a non-empty (batch, tokens) integer tensor, got "
            f"{tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__}"
        )
    if vocab is None and model is not None and hasattr(model, "get_input_embeddings"):
        vocab = getattr(model.get_input_embeddings(), "num_embeddings", None)
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or (vocab is not None and high >= vocab):
        raise ConfigError(
            f"{name} holds ids in [{low}, {high}], outside the vocabulary [0, {vocab}): another tokenizer's tokens?"
        )


def _progress(items, desc: str, enabled: bool):
    if enabled and importlib.util.find_spec("tqdm") is not None:
        from tqdm.auto import tqdm  # optional dependency: a bar where it is installed

        return tqdm(items, desc=desc, unit="layer")
    return items


def describe(config: QuantConfig) -> str:
    """A short label for progress bars: method, bits, refinement objective and steps."""
    leaves = config.leaves()
    bits = "/".join(str(b) for b in dict.fromkeys(getattr(c, "bits", "?") for c in leaves))
    refine_ = getattr(leaves[0], "refine", None)
    how = f" {refine_.objective}×{refine_.steps}" if refine_ is not None and refine_.steps else ""
    return f"{config.method} {bits}b{how}"


def _refine_in_batches(chosen: dict, stats) -> dict[str, tuple[nn.Module, LayerReport]]:
    """Layers whose method is a :class:`ScaleMethod` with a batchable refinement, refined in groups of one shape
    and config, built and reported: ``{name: (module, report)}``."""
    groups: dict[tuple, list] = {}
    for name, (module, leaf) in chosen.items():
        handler = handler_for(leaf)
        refine_ = getattr(leaf, "refine", None)
        # Checked before the init: a layer the stacked loop cannot take would have its init computed twice.
        if not (isinstance(handler, ScaleMethod) and refine_ and refine_.steps > 0 and refine_.objective in OBJECTIVES):
            continue
        torch.manual_seed(leaf.seed)
        weight, grid, scale = handler.start(name, module, leaf)
        if not batchable(scale, leaf.refine):
            continue
        key = (leaf, type(scale), tuple(tuple(p.shape) for p in scale.parameters()), tuple(weight.shape))
        groups.setdefault(key, []).append((name, module, handler, weight, grid, scale))
    out = {}
    for (leaf, *_), members in groups.items():
        layer_stats = [None if stats is None else stats.get(name) for name, *_ in members]
        results = refine_batched(
            [m[3] for m in members], [m[5] for m in members], members[0][4], leaf.refine, layer_stats
        )
        for (name, module, handler, weight, grid, scale), result in zip(members, results):
            out[name] = handler.complete(name, module, leaf, weight, grid, scale, result)
    return out


def quantize_(
    model: nn.Module,
    config: QuantConfig,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    calib_ids: torch.Tensor | None = None,
    stats: dict[str, LayerStats] | None = None,
    progress: bool | str = True,
    resume_dir: str | os.PathLike | None = None,
    batch_refine: bool | None = None,
    restart: bool = False,
) -> QuantizeReport:
    """Quantize ``model`` in place with ``config``; returns per-layer errors and float counts.

    ``calib_ids (1, T)`` is required when a refinement objective needs activations (statistics are collected
    from the float model before any layer is replaced), unless ``stats`` are given. ``resume_dir``: each
    finished layer is saved there, and a rerun picks up after the last one; the journal is bound to the config, the
    model's weights and the calibration tokens (or ``stats``), and one made for others is refused
    (``CheckpointError`` naming what differs) unless ``restart=True`` empties it. ``progress``: a bar (True, or a
    string that labels it). ``batch_refine``: run Algorithm 1 on all layers of one shape at once
    (``lords.refine_batched``; default: when the weights are on a GPU and no ``resume_dir`` is given).
    """
    if not isinstance(config, QuantConfig):
        raise ConfigError(f"config={config!r} is not a quantization config (LordsConfig, BlockwiseConfig, ...)")
    config = config.resolve(model, calib_ids)
    chosen = plan(model, config, filter_fn)
    if not chosen:
        kinds = sorted({type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__})
        where = (
            f"include={config.include}, exclude={config.exclude}"
            if hasattr(config, "include")
            else "check the rules and the leaves' include/exclude"
        )
        raise UnsupportedModuleError(
            f"no nn.Linear (or other module {type(config).__name__} handles) to quantize in {type(model).__name__} "
            f"({where}; linear-like modules found: {kinds or 'none'})"
        )
    fused = fused_params_left_in_float(model, config, chosen)
    if fused:
        raise UnsupportedModuleError(
            f"{len(fused)} fused expert parameter(s) are not nn.Linear and would stay in float: {fused[:4]}"
            f"{' ...' if len(fused) > 4 else ''}; lords quantizes nn.Linear only. Exclude them to keep them in float "
            "knowingly (e.g. exclude=('lm_head', 'experts'))"
        )
    journal = None
    if resume_dir is not None:  # bound before any layer changes: the float weights are what it fingerprints
        calibrated = config.needs_calibration and stats is None and calib_ids is not None
        inputs = {
            "model_weights": model_fingerprint(model),
            "calibration_tokens": tokens_digest(calib_ids[:, : config.calibration[0]]) if calibrated else None,
            "calibration_statistics": stats_digest(stats),
        }
        journal = LayerJournal(resume_dir, config, inputs, restart=restart)
    if stats is None:
        stats = calibration_stats(model, config, calib_ids, chosen)
    if batch_refine is None:  # stacked refinement pays on a GPU; the journal wants layers one at a time
        first = getattr(next(iter(chosen.values()))[0], "weight", None)
        batch_refine = journal is None and first is not None and first.is_cuda
    batched = _refine_in_batches(chosen, stats) if batch_refine else {}
    report = QuantizeReport()
    label = progress if isinstance(progress, str) else describe(config)
    for name in _progress(list(chosen), label, bool(progress)):
        module, leaf = chosen[name]
        done = journal.load(name, module) if journal else None
        if done is None and name in batched:
            done = batched.pop(name)
        if done is None:
            torch.manual_seed(leaf.seed)
            done = handler_for(leaf)(name, module, leaf, None if stats is None else stats.get(name))
            if journal:
                journal.save(name, *done)
        new, layer_rep = done
        model.set_submodule(name, new)
        report.layers.append(layer_rep)
    report.config = config.stored_config
    model.lords_config = report.config  # what save_quantized records when no config is handed to it
    for hook in _AFTER_QUANTIZE:
        hook(model, report.config)
    return report
