"""LoRDS Triton kernels: the forward and backward of ``LoRDSLinear`` on CUDA.

Importing this package changes nothing: a model runs Triton only after ``use_triton(model)`` hands its
``LoRDSLinear`` layers the Triton forward (``use_torch(model)`` gives them back the reference).
"""

from .dispatch import LayerPlan, kernel_codes, lords_linear, plan_of, triton_forward, use_torch, use_triton
from .lords_matmul.tuning import load_table

__all__ = [
    "LayerPlan",
    "kernel_codes",
    "load_table",
    "lords_linear",
    "plan_of",
    "triton_forward",
    "use_torch",
    "use_triton",
]
