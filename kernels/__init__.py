"""LoRDS Triton kernels: the forward and backward of ``LoRDSLinear`` on CUDA.

Importing this package registers the ``"triton"`` backend with ``lords.linear`` (when that module exists) and
exposes the per-model switches. Nothing process-wide changes: a model runs Triton only where its layers say so
(``backend="triton"``, or ``"auto"`` on CUDA).
"""
from .dispatch import kernel_codes, lords_linear, triton_forward, use_torch, use_triton
from .lords_matmul.tuning import load_table

try:
    from lords.linear import register_backend
except ImportError:  # the core library's module is not there yet: the functions above still work
    register_backend = None
if register_backend is not None:
    register_backend("triton", triton_forward)

__all__ = ["kernel_codes", "load_table", "lords_linear", "triton_forward", "use_torch", "use_triton"]
