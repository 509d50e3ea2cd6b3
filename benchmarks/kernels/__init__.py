"""Kernel benchmarks: LoRDS against cuBLAS, bitsandbytes and gemlite; the tile sweep; the report renderer."""

from pathlib import Path

DEFAULT_TABLE = Path(__file__).resolve().parents[2] / "lords_kernels" / "lords_matmul" / "tuned_h100.json"
"""The committed tile table the runtime loads (``lords_kernels.load_table``)."""
