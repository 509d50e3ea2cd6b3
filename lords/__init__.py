"""lords: Low-Rank Decomposed Scaling (LoRDS) for LLM quantization and adaptation.

    import lords
    config = lords.LordsConfig(bits=3, block_size=64)
    report = lords.quantize_(model, config)
    lords.save_quantized(model, "out/", config)

Importable with torch alone (transformers is needed only to load or rebuild Hugging Face models). With
transformers installed, ``import lords`` registers ``quant_method: "lords"`` with it (``lords.hf``): then
``AutoModelForCausalLM.from_pretrained(lords_dir)`` returns the quantized model (``lords.hf_registration``: the
registration waits for transformers to load its quantizer registry, so ``import lords`` does not import transformers).
"""

from .adapter import load_adapter, save_adapter
from .checkpoint import load_quantized, save_quantized
from .config import BlockwiseConfig, LordsConfig, QuantConfig, RefineConfig, ScaleConfig, config_from_dict
from .errors import LordsError
from .gptq import BlockwiseGPTQConfig, LordsGPTQConfig  # registers lords_gptq, blockwise_gptq
from .handlers import ScaleMethod, handler_for, layer_report, register_handler, scale_method
from .layerwise import LayerwiseConfig
from .layouts import register_layout
from .linear import BlockLinear, LoRDSLinear, QuantizedLinear, cached_weights
from .loftq import LoftQConfig, LoftQLinear
from .mixed import MixedPrecisionConfig
from .peft import mark_only_scales_trainable
from .qat import QATConfig, QATLinear
from .quantize import calibration_stats, plan, quantize_
from .refine import LayerStats, RefineAdam, Refiner, refine
from .report import LayerReport, QuantizeReport, storage_bits
from .scales import BlockScale, LowRankScale
from .stream import load_streamed, quantize_streamed
from .version import __version__  # noqa: F401  (lords.__version__)

__all__ = [
    "BlockLinear",
    "BlockScale",
    "BlockwiseConfig",
    "BlockwiseGPTQConfig",
    "LayerReport",
    "LayerStats",
    "LayerwiseConfig",
    "LoftQConfig",
    "LoftQLinear",
    "LoRDSLinear",
    "LordsGPTQConfig",
    "LordsConfig",
    "LordsError",
    "LowRankScale",
    "MixedPrecisionConfig",
    "QATConfig",
    "QATLinear",
    "QuantConfig",
    "QuantizeReport",
    "QuantizedLinear",
    "RefineAdam",
    "RefineConfig",
    "Refiner",
    "ScaleConfig",
    "ScaleMethod",
    "cached_weights",
    "calibration_stats",
    "config_from_dict",
    "handler_for",
    "layer_report",
    "load_adapter",
    "load_quantized",
    "mark_only_scales_trainable",
    "plan",
    "load_streamed",
    "quantize_",
    "quantize_streamed",
    "refine",
    "register_handler",
    "register_layout",
    "save_adapter",
    "save_quantized",
    "scale_method",
    "storage_bits",
]

from .hf_registration import install as _install_hf

_install_hf()


def __getattr__(name):
    if name == "LordsQuantConfig":
        from .hf import LordsQuantConfig  # imports transformers: on first use only

        return LordsQuantConfig
    raise AttributeError(f"module 'lords' has no attribute {name!r}")
