"""The LoRDS Triton kernels' entry points: :func:`lords_matmul` (:mod:`.forward`) and :func:`lords_matmul_backward`
(:mod:`.backward`), built from the device functions of :mod:`.primitives`; :mod:`.reference` is the specification.
"""

from .backward import lords_matmul_backward
from .forward import lords_matmul, prmt_table
from .primitives import INTERPRET, _prmt_asm  # noqa: F401  (the prmt tests read it here)
from .tuning import TileConfig

__all__ = ["INTERPRET", "TileConfig", "lords_matmul", "lords_matmul_backward", "prmt_table"]
