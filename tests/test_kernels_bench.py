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

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available() or not tk.INTERPRET, reason="the smoke run is for the CPU interpreter"
)


def test_bench_k16_smoke_writes_every_section(tmp_path):
    from benchmarks.kernels import bench_k16

    bench_k16.main(["--smoke", "--out-dir", str(tmp_path)])
    out = json.loads((tmp_path / "kernels_k16.json").read_text())
    impls = {r["impl"] for r in out["rows"]}
    assert {"fp16", "fused", "dequant_cublas", "lords_cublas_bwd", "lords_fused_peft", "lords_plan"} <= impls
    assert out["errors"] == {} and out["dequant"] and out["crossover"]
    assert "| N×K | M |" in (tmp_path / "kernels_k16.md").read_text()


@pytest.mark.parametrize("M", [1, 4, 64])
def test_every_tile_the_sweep_times_computes_the_reference(M):
    """A sweep candidate that launched but computed something else would win the table on speed."""
    from benchmarks.kernels.tune import candidate_configs, dequant_candidates
    from lords.grids import make_grid
    from lords.packing import pack_codes
    from lords_kernels.lords_matmul import reference as ref
    from lords_kernels.lords_matmul.dequant import dequantize
    from lords_kernels.lords_matmul.layout import repack

    N, K, r = 160, 384, 12
    g = torch.Generator().manual_seed(M)
    qweight = pack_codes(torch.randint(0, 16, (N, K), generator=g), 4)
    grid = make_grid("nf", 4)
    B = (torch.randn(N, r, generator=g) / r**0.5).half()
    A = (torch.rand(r, K, generator=g) + 0.5).half()
    x = torch.randn(M, K, generator=g).half()
    kc = repack(qweight, 4, K)
    want = ref.lords_matmul(x, qweight, grid, B, A, None, 4)
    cands = candidate_configs(M, N, K, 4, r)
    assert M > 1 or any(c.kernel == "gemv" for c in cands)
    for cfg in cands:
        y = tk.lords_matmul(x, kc, grid, B, A, None, cfg)
        assert ((y.double() - want).norm() / want.norm()).item() < 2e-3, cfg  # fp16 operands
    w_want = ref.dequantize(qweight, grid, B, A, 4)
    for cfg in dequant_candidates():
        w = dequantize(kc, grid, B, A, torch.float16, cfg=cfg)
        assert ((w.double() - w_want).norm() / w_want.norm()).item() < 2e-3, cfg


def test_heuristic_check_rates_the_default_tile_against_the_best_the_sweep_timed():
    import dataclasses

    from benchmarks.kernels.heuristic_check import check, render
    from lords_kernels.lords_matmul.tuning import TileConfig, default_config

    cell = dict(N=11008, K=4096, bits=4, r=40)
    heur = dataclasses.asdict(default_config(1, 11008, 4096, 4, 40))
    faster = dataclasses.asdict(TileConfig("gemv", BN=64, split_k=4, num_warps=4))
    log = [
        dict(cfg=heur, us_graph=30.0, M=1, **cell),
        dict(cfg=faster, us_graph=25.0, M=1, **cell),
        dict(cfg=faster, us_graph=9.0, M=4, **cell),  # M = 4: the heuristic's tile was not timed
        dict(cfg=faster, us_graph=3.0),
    ]  # a dequant tile of the sweep: no cell, skipped
    rows = check(log)
    assert [(r["M"], r["ratio"]) for r in rows] == [(1, 1.2), (4, None)]
    table = render(rows, 1.10)
    assert "1.20 ✗" in table and "not swept" in table and "1 of 2 cells rated; 1 above 1.10" in table
