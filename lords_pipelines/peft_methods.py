"""The four PEFT methods of the table, each on a 4-bit base and at the same trainable floats per layer.

- ``lords_peft``: ``quantize_(model, LordsConfig(bits, block_size))`` (SVD init of the block scales, codes ``Q`` from
  it), then only ``B, A`` train (``lords.mark_only_scales_trainable``). ``Q`` never changes; nothing is merged after.
- ``qlora``: every decoder linear becomes bitsandbytes' ``Linear4bit`` (NF4, block ``block_size``, fp32 absmax: no
  double quantization, so the base stores what ``BlockwiseConfig`` stores), then peft's LoRA (peft dispatches its
  own bnb 4-bit LoRA layer, the one QLoRA users train and that ``merge_and_unload`` merges), default init (A Kaiming,
  B zero). bitsandbytes 0.50.2 runs ``Linear4bit`` forward and backward on the CPU too (a test checks): the CPU
  path is the GPU path, slower.
- ``loftq``: LoftQ's initialisation: ``Q, L·R`` fitted by alternating NF4 quantization of ``W − L·R`` and a rank-r
  SVD of ``W − deq(Q)``; the base is ``Q`` (re-quantized by bnb, which gives back the same codes) and the LoRA starts
  at ``A = R, B = L / scaling``. On CUDA through peft (``init_lora_weights="loftq"``; peft's ``loftq_init`` runs
  only on CUDA/XPU); on the CPU through the project's ``lords.loftq`` alternation over the same NF4 grid (the
  project's NF4 equals bnb's code for code), ``loftq_iters`` alternations either way.
- ``qpissa``: peft's PiSSA initialisation (``init_lora_weights="pissa"``) on the float weights: the top-r singular
  directions of ``W`` go into the LoRA, the residual ``W − B·A·scaling`` is what bnb quantizes (QPiSSA as its
  paper and peft's docs describe it).
- At 3 or 2 bits (bitsandbytes has no such layer) the LoRA methods' base is the project's block-wise NF
  ``BlockLinear`` at that width and block (absmax, fp32 scales, as bnb's NF4 at 4), LoftQ by ``lords.loftq``.
The LoRA rank of each layer is LoRDS's parity rank at ``block_size``: ``r·(n+m)`` trainable floats, exactly the
``B, A`` that LoRDS trains on that layer (``adapters.matched_lora_ranks``); ``alpha = alpha_ratio · r``.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from lords import BlockwiseConfig, LordsConfig, mark_only_scales_trainable, plan, quantize_
from lords.errors import ConfigError
from lords.lowrank import parity_rank
from lords_pipelines.adapters import add_lora

METHODS = ("lords_peft", "qlora", "loftq", "qpissa")
LORA_METHODS = ("qlora", "loftq", "qpissa")
BNB_BLOCKS = (32, 64, 128, 256, 512, 1024, 2048, 4096)
"""The block sizes bitsandbytes' 4-bit quantizer accepts (the 4-bit LoRA methods' base)."""


@dataclass
class Prepared:
    """A model ready to train and what the table states about it."""

    model: nn.Module
    method: str
    trainable_floats: int
    ranks: dict[str, int]
    """Per quantized layer: LoRDS's rank of ``B, A`` or the LoRA rank (equal by construction)."""
    base: str
    """What holds the 4-bit weights: ``lords`` (``LoRDSLinear``) or ``bnb-nf4`` (``bnb.nn.Linear4bit``)."""
    init: str
    """How the trainable factors start, in words (which implementation ran)."""

    @property
    def mean_rank(self) -> float:
        return sum(self.ranks.values()) / len(self.ranks)


def target_ranks(model: nn.Module, block_size: int) -> dict[str, int]:
    """``{name: parity rank}`` of the linears ``quantize_`` replaces (every decoder linear; ``lm_head`` stays)."""
    return {
        name: parity_rank(m.out_features, m.in_features, block_size)
        for name, (m, _) in plan(model, BlockwiseConfig(bits=4, block_size=block_size)).items()
    }


def trainable_floats(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def prepare(
    float_model: nn.Module,
    method: str,
    bits: int = 4,
    block_size: int = 64,
    seed: int = 0,
    alpha_ratio: float = 1.0,
    loftq_iters: int = 1,
    lords_refine=None,
    calib_ids=None,
) -> Prepared:
    """A quantized copy of ``float_model`` (left untouched) with only ``method``'s factors trainable.

    ``lords_refine`` (a ``lords.RefineConfig``, with ``calib_ids`` for a calibrated objective): LoRDS starts from
    Algorithm 1's refinement of its SVD init instead of the init itself (the other methods are data-free)."""
    if method not in METHODS:
        raise ConfigError(f"method={method!r} is not one of {METHODS}")
    model = copy.deepcopy(float_model)
    ranks = target_ranks(model, block_size)
    if method == "lords_peft":
        quantize_(
            model,
            LordsConfig(bits=bits, block_size=block_size, refine=lords_refine),
            calib_ids=calib_ids,
            progress=False,
        )
        init = "SVD of the block scales" + (
            "" if lords_refine is None else f", Algorithm 1 ({lords_refine.objective}, T = {lords_refine.steps})"
        )
        return Prepared(model, method, mark_only_scales_trainable(model), ranks, "lords", init)
    model, start, init = lora_base(model, method, ranks, bits, block_size, alpha_ratio, loftq_iters)
    model = add_lora(model, ranks, alpha_ratio, seed)
    if start is not None:
        set_lora(model, start, scale_B=1 / alpha_ratio if method == "loftq" else 1.0)
    return Prepared(model, method, trainable_floats(model), ranks, "bnb-nf4" if bits == 4 else f"lords-nf{bits}", init)


def lora_base(
    model: nn.Module,
    method: str,
    ranks: dict[str, int],
    bits: int = 4,
    block_size: int = 64,
    alpha_ratio: float = 1.0,
    loftq_iters: int = 1,
):
    """``(base, start, init)``: ``model`` (changed in place) with 4-bit bnb NF4 linears (other widths: the
    project's block-wise NF ``BlockLinear``, bitsandbytes having no 3- or 2-bit layer) holding what ``method``
    leaves in the base (``W``; LoftQ's ``Q``; PiSSA's residual), the LoRA's starting ``{name: (A, B)}`` (None:
    peft's default) and the init in words. Deterministic: a saved adapter reloads onto the base rebuilt from the
    same float model (``load_trained``)."""
    if bits not in (2, 3, 4):
        raise ConfigError(f"method={method!r}: bits={bits} is not one of (2, 3, 4)")
    if bits == 4 and block_size not in BNB_BLOCKS:
        raise ConfigError(f"method={method!r}: bitsandbytes' NF4 takes block_size in {BNB_BLOCKS}, not {block_size}")
    start, init = None, "peft default (A Kaiming, B zero)"
    if method == "qpissa":
        start, init = peft_init(model, ranks, "pissa", alpha_ratio), "peft pissa (SVD of W)"
    elif method == "loftq" and bits == 4 and torch.cuda.is_available():
        if block_size != 64:
            raise ConfigError(f"loftq: peft's loftq_init quantizes at bnb's block 64, not block_size={block_size}")
        start = peft_init(model, ranks, "loftq", alpha_ratio, loftq_iters)
        init = f"peft loftq_init, {loftq_iters} iteration(s) (CUDA)"
    elif method == "loftq":
        start = lords_loftq_init(model, ranks, block_size, loftq_iters, bits)
        where = "peft's runs only on CUDA" if bits == 4 else "peft's is 4-bit only"
        init = f"lords.loftq alternation, {loftq_iters} iteration(s) ({where})"
    if bits == 4:
        return to_bnb_4bit(model, list(ranks), block_size), start, init
    return to_blockwise(model, list(ranks), bits, block_size), start, init


def save_trained(prepared: Prepared, path) -> None:
    """LoRDS: the whole quantized checkpoint (codes as before PEFT, trained ``B, A``: the model as served); the
    LoRA methods: peft's adapter folder (only the LoRA factors; the base is rebuilt by ``load_trained``)."""
    if prepared.method == "lords_peft":
        from lords import save_quantized

        save_quantized(prepared.model, path)
    else:
        prepared.model.save_pretrained(str(path))


def load_trained(
    float_model: nn.Module,
    method: str,
    path,
    block_size: int = 64,
    alpha_ratio: float = 1.0,
    loftq_iters: int = 1,
    bits: int = 4,
) -> nn.Module:
    """What ``save_trained`` wrote, loaded for evaluation (LoRA methods: onto their rebuilt base, unmerged)."""
    if method == "lords_peft":
        from lords import load_quantized

        return load_quantized(path, copy.deepcopy(float_model))[0]
    from peft import PeftModel

    model = copy.deepcopy(float_model)
    base, _, _ = lora_base(model, method, target_ranks(model, block_size), bits, block_size, alpha_ratio, loftq_iters)
    if bits != 4:  # a BlockLinear base: peft needs its custom-module registration (adapters.load_lora)
        from lords_pipelines.adapters import load_lora

        return load_lora(base, path)
    return PeftModel.from_pretrained(base, str(path)).eval()


def _lora_config(ranks: dict[str, int], alpha_ratio: float, **kw):
    from peft import LoraConfig

    pattern = {f"^{k.replace('.', '[.]')}$": v for k, v in ranks.items()}
    default = max(ranks.values())
    return LoraConfig(
        r=default,
        lora_alpha=alpha_ratio * default,
        target_modules=list(ranks),
        rank_pattern=pattern,
        alpha_pattern={k: alpha_ratio * v for k, v in pattern.items()},
        lora_dropout=0.0,
        bias="none",
        **kw,
    )


@torch.no_grad()
def peft_init(
    model: nn.Module, ranks: dict[str, int], init: str, alpha_ratio: float = 1.0, loftq_iters: int = 1
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Run peft's ``init_lora_weights=init`` on the float ``model`` and unload it: ``model``'s linears now hold
    the base peft leaves (PiSSA: the residual; LoftQ: the dequantized NF4 codes); returns ``{name: (A, B)}``."""
    from peft import LoftQConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    extra = {"loftq_config": LoftQConfig(loftq_bits=4, loftq_iter=loftq_iters)} if init == "loftq" else {}
    peft_model = get_peft_model(model, _lora_config(ranks, alpha_ratio, init_lora_weights=init, **extra))
    start = {
        name: (m.lora_A["default"].weight.detach().clone(), m.lora_B["default"].weight.detach().clone())
        for name, m in peft_model.base_model.model.named_modules()
        if isinstance(m, LoraLayer)
    }
    peft_model.unload()
    return start


@torch.no_grad()
def lords_loftq_init(
    model: nn.Module, ranks: dict[str, int], block_size: int, iters: int = 1, bits: int = 4
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """LoftQ by the project's alternation (``lords.loftq``, NF at ``bits``, ``block_size``): each linear's weight
    becomes ``deq(Q)``; returns ``{name: (A = R, B = L)}``."""
    from lords.linear import BlockLinear
    from lords.loftq import LoftQConfig, quantize_loftq

    start = {}
    for name, rank in ranks.items():
        linear = model.get_submodule(name)
        config = LoftQConfig(bits=bits, block_size=block_size, rank=rank, iters=iters)
        module, _ = quantize_loftq(name, linear, config)
        linear.weight.data.copy_(BlockLinear.dequantized_weight(module).to(linear.weight.dtype))
        start[name] = (module.lora_R.detach().clone(), module.lora_L.detach().clone())
    return start


def to_blockwise(model: nn.Module, names: list[str], bits: int, block_size: int) -> nn.Module:
    """Replace each named ``nn.Linear`` by the project's block-wise NF ``BlockLinear`` at ``bits`` (absmax per
    ``block_size`` inputs, fp32 scales: what bnb's NF4 stores, at another width); returns ``model``."""
    wanted = set(names)
    quantize_(
        model,
        BlockwiseConfig(bits=bits, block_size=block_size),
        filter_fn=lambda m, name: name in wanted,
        progress=False,
    )
    return model


def to_bnb_4bit(model: nn.Module, names: list[str], block_size: int) -> nn.Module:
    """Replace each named ``nn.Linear`` by ``bnb.nn.Linear4bit`` (NF4, ``block_size``, fp32 absmax), quantized on
    the linear's device. Compute dtype: bf16 on CUDA (``bnb_4bit_compute_dtype=torch.bfloat16``, as QLoRA users set
    it; the LoRDS kernels also run fp32 inputs in bf16), the weight's dtype on the CPU."""
    import bitsandbytes as bnb

    for name in names:
        lin = model.get_submodule(name)
        device = lin.weight.device
        dtype = torch.bfloat16 if device.type == "cuda" else lin.weight.dtype
        q = bnb.nn.Linear4bit(
            lin.in_features,
            lin.out_features,
            bias=lin.bias is not None,
            compute_dtype=dtype,
            compress_statistics=False,
            quant_type="nf4",
            device="meta",
        )
        q.weight = bnb.nn.Params4bit(
            lin.weight.detach().float().cpu(),
            requires_grad=False,
            blocksize=block_size,
            compress_statistics=False,
            quant_type="nf4",
        )
        if lin.bias is not None:
            q.bias = nn.Parameter(lin.bias.detach().clone().cpu(), requires_grad=False)
        # On CPUs with AVX512-BF16, bnb repacks the codes into a CPU layout (bf16 statistics) at the first no-grad
        # eval forward; peft's merge (dequantize_4bit) then reads that layout as the portable one and merges garbage.
        # Keep the portable layout (one code path on every CPU; no effect on CUDA).
        q.support_avx512bf16_for_cpu = False
        model.set_submodule(name, q.to(device))
    model.is_loaded_in_4bit = True  # what peft reads to dispatch its bnb 4-bit LoRA layer (as after from_pretrained)
    return model


@torch.no_grad()
def set_lora(model: nn.Module, start: dict[str, tuple[torch.Tensor, torch.Tensor]], scale_B: float = 1.0) -> None:
    """Copy ``{name: (A, B)}`` into the LoRA of each layer (``B · scale_B``)."""
    from peft.tuners.lora import LoraLayer

    layers = {name: m for name, m in model.base_model.model.named_modules() if isinstance(m, LoraLayer)}
    if set(layers) != set(start):
        raise ConfigError(f"LoRA layers {sorted(set(layers) ^ set(start))[:3]} have no start (or the reverse)")
    for name, (A, B) in start.items():
        layers[name].lora_A["default"].weight.copy_(A)
        layers[name].lora_B["default"].weight.copy_(B * scale_B)


def merged(model: nn.Module) -> nn.Module | None:
    """The LoRA merged into its bnb base where peft allows (``merge_and_unload``: dequantize, add, re-quantize to
    NF4: lossy), else None (no adapter, or a ``BlockLinear`` base, which peft cannot merge into). Consumes
    ``model``."""
    from lords.linear import BlockLinear

    if not hasattr(model, "merge_and_unload") or any(isinstance(m, BlockLinear) for m in model.modules()):
        return None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Mm]erge.*")
        return model.merge_and_unload()
