"""lords: Low-Rank Decomposed Scaling (LoRDS) for LLM quantization and adaptation.

    import lords
    report = lords.quantize_(model, lords.LordsConfig(bits=3, block_size=64))
    lords.save_quantized(model, "out/", config)

Importable with torch alone (transformers is needed only to load or rebuild Hugging Face models).
"""
__version__ = "0.1.0"

from . import models, qat, texts  # noqa: F401  (lords.models.load_model etc.)
from .checkpoint import load_quantized, save_quantized
from .config import BlockwiseConfig, LordsConfig, RefineConfig
from .errors import LordsError
from .linear import BlockLinear, LoRDSLinear, QuantizedLinear, cached_weights
from .peft import mark_only_scales_trainable
from .quantize import QuantizeReport, quantize_

__all__ = [
    "BlockLinear", "BlockwiseConfig", "LoRDSLinear", "LordsConfig", "LordsError", "QuantizeReport", "QuantizedLinear",
    "RefineConfig", "cached_weights", "load_quantized", "mark_only_scales_trainable", "quantize_",
    "save_quantized",
]
