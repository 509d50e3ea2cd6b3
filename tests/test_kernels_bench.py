"""The issue-16 GPU benchmark script runs end to end on the CPU (Triton's interpreter, a tiny shape), so a GPU call
cannot fail for a reason the CPU would have shown."""
from __future__ import annotations

import json
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lords_kernels.lords_matmul import triton as tk  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.is_available() or not tk.INTERPRET,
                                reason="the smoke run is for the CPU interpreter")


def test_bench_k16_smoke_writes_every_section(tmp_path):
    from lords_kernels import bench_k16

    bench_k16.main(["--smoke", "--out-dir", str(tmp_path)])
    out = json.loads((tmp_path / "k16.json").read_text())
    impls = {r["impl"] for r in out["rows"]}
    assert {"fp16", "fused", "dequant_cublas", "zgemv", "lords_cublas_bwd", "lords_fused_peft", "lords_plan"} <= impls
    assert out["errors"] == {} and out["dequant"] and out["crossover"]
    assert "| N×K | M |" in (tmp_path / "k16.md").read_text()
