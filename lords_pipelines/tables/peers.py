"""The peers users actually pick, run by their own libraries: GPTQ and AWQ through llmcompressor, HQQ through hqq.

Each peer quantizes a copy of the float model; its quantized weights are then dequantized by the peer library
itself and loaded back into the float architecture, so a peer row scores exactly the weights the library would
serve:

- ``gptq`` / ``awq``: ``llmcompressor.oneshot`` with ``GPTQModifier`` / ``AWQModifier`` (int codes, one scale per
  group of ``group_size`` inputs; GPTQ symmetric as llmcompressor's ``W4A16`` preset, AWQ asymmetric as its
  ``W4A16_ASYM`` default). Every quantized layer is packed by compressed-tensors' ``pack-quantized`` compressor (the
  format llmcompressor saves) and unpacked by the same compressor; AWQ's smoothing also rescales the norms and
  linears before them, so the float architecture takes every tensor of the oneshot model, not just the codes.
- ``hqq``: ``hqq.core.quantize.HQQLinear`` (data-free, asymmetric, float scale and zero point per group, in hqq's
  default compute dtype float16) on every linear layer but the LM head, dequantized by ``HQQLinear.dequantize``.

``bits_per_weight`` counts the stored bytes of every quantized layer (packed codes, scales, zero points, at their
stored dtypes: compressed-tensors packs asymmetric zero points at the code width and drops symmetric ones; hqq
packs 3-bit codes ten to an int32, so they cost 3.2 bits) over its weight count; ``float_params`` counts the stored
floats (scales, and hqq's zero points, which are floats). The libraries are optional (``pip install .[peers]``,
or the ``--no-deps`` overlay ``docs/peers.md`` gives): :func:`unavailable` says why a peer cannot run here.
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import tempfile
from dataclasses import dataclass

import torch
from torch import nn

PEERS = ("gptq", "awq", "hqq")
LIBRARY = {"gptq": "llmcompressor", "awq": "llmcompressor", "hqq": "hqq"}
WINDOW = 2048
"""Calibration tokens per sequence handed to llmcompressor (longer samples are cut into sequences of this many)."""
EXCLUDE = ("lm_head",)
"""Layers kept in float, as the library's configs keep them (``exclude=('lm_head',)``)."""


@dataclass
class PeerResult:
    model: nn.Module
    """The float architecture holding the peer's dequantized weights (and, for AWQ, its rescaled norms)."""
    bits_per_weight: float
    """Stored bits of the quantized layers (codes, scales, zero points) per weight."""
    code_bits: float
    """Stored bits of the packed codes alone, per weight."""
    float_params: int
    """Floats stored besides the codes (scales; hqq's zero points)."""
    weight_rel_error: float
    """``sqrt(Σ‖W − Ŵ‖² / Σ‖W‖²)`` over the quantized layers, against the float model's weights."""
    library: str
    """``name==version`` of the library that produced the codes."""


def unavailable(method: str, model: nn.Module | None = None, group_size: int | None = None) -> str | None:
    """Why ``method`` cannot run in this environment (None when it can); with ``model`` and ``group_size``, also
    why it cannot run on that model (llmcompressor refuses groups that do not divide a layer's inputs)."""
    if method not in PEERS:
        return f"{method!r} is not a peer ({PEERS})"
    try:
        if LIBRARY[method] == "llmcompressor":
            importlib.import_module("llmcompressor")
            importlib.import_module("compressed_tensors")
        else:
            importlib.import_module("hqq.core.quantize")
    except Exception as e:  # an import error, or a library that fails at import beside these pins
        return f"{LIBRARY[method]} does not import here ({type(e).__name__}: {e}); see docs/peers.md"
    if model is not None and group_size and LIBRARY[method] == "llmcompressor":
        widths = sorted({m.in_features for m in _quantized_linears(model).values() if m.in_features % group_size})
        if widths:
            return (
                f"llmcompressor refuses group_size={group_size} on inputs of width {widths} "
                "(group quantization needs columns % group_size == 0)"
            )
    return None


def quantize_peer(
    float_model: nn.Module,
    method: str,
    bits: int,
    group_size: int,
    calib_ids: torch.Tensor | None = None,
    tokenizer=None,
) -> PeerResult:
    """``method``'s model of ``float_model`` (left untouched) at ``bits`` with one scale per ``group_size`` inputs.

    ``calib_ids (1, T)``: calibration tokens (GPTQ and AWQ; one sample of ``T`` tokens, the very tokens LoRDS's
    calibrated rows see); ``tokenizer``: llmcompressor insists on one when a dataset is given (it is not used
    to re-tokenize: the ids go in as they are).
    """
    reason = unavailable(method, float_model, group_size)
    if reason:
        raise RuntimeError(reason)
    if method == "hqq":
        return _hqq(float_model, bits, group_size)
    if calib_ids is None:
        raise ValueError(f"{method} needs calibration tokens (calib_ids)")
    return _llmcompressor(float_model, method, bits, group_size, calib_ids, tokenizer)


def _version(dist: str) -> str:
    return f"{dist}=={importlib.metadata.version(dist)}"


def _quantized_linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not any(s in n for s in EXCLUDE)}


def _result(
    float_model,
    weights: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    stored_bits: int,
    code_bits: int,
    floats: int,
    library: str,
) -> PeerResult:
    """The float architecture with ``state`` (every float tensor) and the dequantized ``weights`` loaded."""
    model = copy.deepcopy(float_model)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise RuntimeError(
            f"{library}: the quantized model lacks {missing[:4]}: cannot load it into the float architecture"
        )
    with torch.no_grad():
        for key, value in own.items():
            value.copy_(state[key].to(value.dtype))
        err = norm = 0.0
        for name, w_hat in weights.items():
            w = float_model.get_submodule(name).weight.detach().float()
            model.get_submodule(name).weight.copy_(w_hat.to(w.device, model.get_submodule(name).weight.dtype))
            err += float((w - w_hat.float().to(w.device)).pow(2).sum())
            norm += float(w.pow(2).sum())
    count = sum(float_model.get_submodule(n).weight.numel() for n in weights)
    return PeerResult(model.eval(), stored_bits / count, code_bits / count, floats, (err / norm) ** 0.5, library)


def _scheme(method: str, bits: int, group_size: int) -> dict:
    """llmcompressor's ``config_groups``: int codes of ``bits``, one scale per ``group_size`` inputs; GPTQ symmetric
    (the ``W4A16`` preset's choice), AWQ asymmetric (its ``W4A16_ASYM`` default)."""
    weights = {
        "num_bits": bits,
        "type": "int",
        "symmetric": method == "gptq",
        "strategy": "group",
        "group_size": group_size,
    }
    return {"group_0": {"targets": ["Linear"], "weights": weights}}


def _llmcompressor(float_model, method, bits, group_size, calib_ids, tokenizer) -> PeerResult:
    from compressed_tensors.compressors.pack_quantized import PackedQuantizationCompressor
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.awq import AWQModifier
    from llmcompressor.modifiers.quantization import GPTQModifier

    if tokenizer is None:
        raise ValueError(f"{method}: llmcompressor needs the model's tokenizer beside a dataset")
    _cpu_without_pinning()
    model = copy.deepcopy(float_model)
    ids = calib_ids.reshape(1, -1).cpu()
    if ids.shape[1] > WINDOW:  # sequences of the window the library's own calibration and the evaluation read
        ids = ids[:, : ids.shape[1] // WINDOW * WINDOW].reshape(-1, WINDOW)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    modifier = (GPTQModifier if method == "gptq" else AWQModifier)(
        config_groups=_scheme(method, bits, group_size), ignore=list(EXCLUDE)
    )
    with tempfile.TemporaryDirectory() as config_dir:
        # oneshot re-reads the model's config from ``name_or_path`` (to refuse checkpoints already quantized):
        # a model built in memory or read from a GGUF has none there, so its config is written for it to read.
        model.config.save_pretrained(config_dir)
        model.config._name_or_path = config_dir
        model = oneshot(
            model=model,
            tokenizer=tokenizer,
            dataset=data,
            recipe=modifier,
            num_calibration_samples=ids.shape[0],
            max_seq_length=ids.shape[1],
            shuffle_calibration_samples=False,
        )
    weights, stored, codes, floats = {}, 0, 0, 0
    for name, module in model.named_modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is None or not isinstance(module, nn.Linear):
            continue
        if hasattr(module, "weight_g_idx"):
            raise RuntimeError(f"{name}: group activation ordering (g_idx) is not what this runner packs")
        state = {
            "weight": module.weight.detach(),
            "weight_scale": module.weight_scale.detach(),
            "weight_zero_point": module.weight_zero_point.detach(),
        }
        packed = PackedQuantizationCompressor.compress(state, scheme)
        stored += sum(t.numel() * t.element_size() * 8 for k, t in packed.items() if k != "weight_shape")
        codes += packed["weight_packed"].numel() * 32
        floats += packed["weight_scale"].numel()
        weights[name] = PackedQuantizationCompressor.decompress(packed, scheme)["weight"].detach().float()
    if set(weights) != set(_quantized_linears(float_model)):
        raise RuntimeError(
            f"{method}: llmcompressor quantized {len(weights)} layers, the model has "
            f"{len(_quantized_linears(float_model))} to quantize"
        )
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return _result(
        float_model,
        weights,
        state,
        stored,
        codes,
        floats,
        f"{_version('llmcompressor')}, {_version('compressed-tensors')}",
    )


def _cpu_without_pinning() -> None:
    """llmcompressor 0.14's AWQ pins its cached activations to page-locked memory unconditionally, which fails
    without an accelerator ("Cannot access accelerator device when none is available"). Pinning only speeds
    host-to-device copies, so on a machine without one the pin is skipped; nothing else is touched."""
    if torch.accelerator.is_available():
        return
    from llmcompressor.pipelines.cache import IntermediatesCache

    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None


def _hqq(float_model, bits, group_size) -> PeerResult:
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    device = next(float_model.parameters()).device
    weights, meta_bits, codes, floats = {}, 0, 0, 0
    for name, linear in _quantized_linears(float_model).items():
        layer = HQQLinear(
            copy.deepcopy(linear).float(),
            BaseQuantizeConfig(nbits=bits, group_size=group_size),
            compute_dtype=torch.float16,
            device=str(device),
            del_orig=True,
        )
        codes += layer.W_q.numel() * layer.W_q.element_size() * 8
        for key in ("scale", "zero"):
            meta_bits += layer.meta[key].numel() * layer.meta[key].element_size() * 8
            floats += layer.meta[key].numel()
        weights[name] = layer.dequantize().detach().float()
    # Only the linear layers change: the float model's own tensors stand for the rest.
    state = {k: v.detach() for k, v in float_model.state_dict().items()}
    return _result(float_model, weights, state, codes + meta_bits, codes, floats, _version("hqq"))
