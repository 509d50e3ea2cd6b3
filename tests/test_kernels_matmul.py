"""Triton LoRDS kernels against the float64 specification (``lords_kernels/lords_matmul/reference.py``).

On a CPU machine the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set here before ``kernels`` is
imported) on small shapes; tests marked ``gpu`` run the same checks on CUDA at model shapes.
Metric: ‖out − ref‖ / ‖ref‖ on fresh random inputs.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lords.grids import make_grid  # noqa: E402
from lords.packing import pack_codes  # noqa: E402
from lords_kernels.lords_matmul import reference as ref  # noqa: E402
from lords_kernels.lords_matmul import triton as tk  # noqa: E402
from lords_kernels.lords_matmul import tuning  # noqa: E402
from lords_kernels.lords_matmul.layout import repack, unrepack  # noqa: E402

# Tolerances on ‖out − ref‖/‖ref‖ against float64: the kernels round W_hat (or A ⊙ x) and x to the operand
# dtype before the tensor-core products and accumulate in fp32, so the error is a few units of the operand
# dtype's rounding: fp16 (2^-11 ≈ 4.9e-4) measured ~2e-4, bf16 (2^-8 ≈ 3.9e-3) measured ~3e-3.
TOL = {torch.float16: 2e-3, torch.bfloat16: 1.2e-2}
DTYPES = [torch.float16, torch.bfloat16]
DT_IDS = ["fp16", "bf16"]

needs_interp_or_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() and not tk.INTERPRET,
    reason="kernels were imported without TRITON_INTERPRET=1 and there is no GPU",
)


def rel(out: torch.Tensor, want: torch.Tensor) -> float:
    return ((out.double() - want.double()).norm() / want.double().norm()).item()


def make_case(N, K, r, bits, dtype, device, grid_name="nf", seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (N, K), generator=g)
    qweight = pack_codes(codes, bits).to(device)
    B = (torch.randn(N, r, generator=g) / r**0.5).to(dtype).to(device)
    A = (torch.rand(r, K, generator=g) + 0.5).to(dtype).to(device)
    grid = make_grid(grid_name, bits).to(device)
    return qweight, grid, B, A


def device_of() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("K", [8, 136, 264, 520])
def test_repack_roundtrip(bits, K):
    codes = torch.randint(0, 2**bits, (7, K))
    kc = repack(pack_codes(codes, bits), bits, K)
    assert torch.equal(unrepack(kc), codes.to(torch.uint8))


# (M, N, K, r): M = 1 takes the gemv kernel; N, K, r not multiples of any tile; K not a multiple of 8 is the
# stored format's padding case.
CPU_SHAPES = [(1, 48, 200, 5), (1, 70, 300, 20), (3, 33, 136, 7), (17, 64, 256, 16), (40, 50, 100, 3)]
# Tile configs forced on top of the default pick: split-K through the last-split reduction, tiny tiles.
CPU_CONFIGS = [
    None,
    dict(kernel="gemm_t", BM=16, BN=32, split_k=3, num_warps=4, num_stages=1),
    dict(kernel="gemv", BN=32, split_k=2, num_warps=4, num_stages=1),
    dict(kernel="gemm_t", BM=16, BN=32, split_k=2, num_warps=4, num_stages=1, S16=True),
    dict(kernel="gemm_t", BM=32, BN=64, split_k=1, num_warps=4, num_stages=1),
    dict(kernel="dequant", BN=128),
]


@needs_interp_or_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: "M{}N{}K{}r{}".format(*s))
def test_forward_matches_reference(shape, bits, dtype):
    M, N, K, r = shape
    dev = device_of()
    qweight, grid, B, A = make_case(N, K, r, bits, dtype, dev, seed=M + N + bits)
    x = torch.randn(M, K, dtype=dtype, device=dev)
    bias = torch.randn(N, dtype=dtype, device=dev)
    kc = repack(qweight, bits, K)
    want = ref.lords_matmul(x, qweight, grid, B, A, bias, bits)
    for cfg in CPU_CONFIGS:
        if cfg is not None and cfg["kernel"] == "gemv" and M != 1:
            continue
        y = tk.lords_matmul(x, kc, grid, B, A, bias, cfg)
        assert y.dtype == dtype and y.shape == (M, N)
        assert torch.isfinite(y).all()
        assert rel(y, want) < TOL[dtype], (cfg, rel(y, want))


@needs_interp_or_cuda
@pytest.mark.parametrize("grid_name", ["int", "nf"])
def test_forward_int_grid_no_bias_3d_input(grid_name):
    dev = device_of()
    qweight, grid, B, A = make_case(40, 72, 6, 4, torch.float16, dev, grid_name)
    x = torch.randn(2, 3, 72, dtype=torch.float16, device=dev)
    y = tk.lords_matmul(x, repack(qweight, 4, 72), grid, B, A, None)
    assert y.shape == (2, 3, 40)
    assert rel(y, ref.lords_matmul(x, qweight, grid, B, A, None, 4)) < TOL[torch.float16]


@needs_interp_or_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize(
    "shape,cublas",
    [((1, 48, 200, 5), False), ((19, 70, 300, 20), False), ((9, 50, 136, 6), True), ((33, 130, 300, 20), True)],
    ids=["fused-M1", "fused-M19", "cublas-M9", "cublas-M33"],
)
def test_backward_matches_reference(shape, cublas, bits, dtype):
    """Fused: dS on chip. cuBLAS: dx through the dequantized weight, dB and dA from cuBLAS's dyᵀx (rounded to the
    operand dtype, as cuBLAS returns dW of a plain fp16/bf16 linear) and the fused ⊙Q reduction. dB, dA are fp32
    (tf32 on GPU) products of operands in the activation dtype: the forward's tolerance holds for all three."""
    M, N, K, r = shape
    dev = device_of()
    qweight, grid, B, A = make_case(N, K, r, bits, dtype, dev, seed=(3 if cublas else 7) + bits)
    x, dy = torch.randn(M, K, dtype=dtype, device=dev), torch.randn(M, N, dtype=dtype, device=dev)
    dx, dB, dA = tk.lords_matmul_backward(dy, x, repack(qweight, bits, K), grid, B, A, cublas=cublas)
    rx, rB, rA = ref.lords_matmul_backward(dy, x, qweight, grid, B, A, bits)
    assert dx.shape == x.shape and dB.shape == (N, r) and dA.shape == (r, K)
    assert rel(dx, rx) < TOL[dtype]
    assert rel(dB, rB) < TOL[dtype]
    assert rel(dA, rA) < TOL[dtype]


@needs_interp_or_cuda
def test_backward_peft_through_cublas_skips_dx():
    dev, dtype = device_of(), torch.bfloat16
    qweight, grid, B, A = make_case(40, 72, 5, 4, dtype, dev)
    x, dy = torch.randn(6, 72, dtype=dtype, device=dev), torch.randn(6, 40, dtype=dtype, device=dev)
    dx, dB, dA = tk.lords_matmul_backward(dy, x, repack(qweight, 4, 72), grid, B, A, need_dx=False, cublas=True)
    _, rB, rA = ref.lords_matmul_backward(dy, x, qweight, grid, B, A, 4)
    assert dx is None and rel(dB, rB) < TOL[dtype] and rel(dA, rA) < TOL[dtype]


@needs_interp_or_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize(
    "shape,cfg",
    [
        ((50, 300, 7), None),
        ((128, 512, 16), None),
        ((70, 136, 20), dict(kernel="dequant", BN=32, GROUPS=2, num_stages=1)),
    ],
    ids=["ragged", "even", "tiny-tiles"],
)
def test_dequantize_matches_reference(shape, cfg, bits, dtype):
    from lords_kernels.lords_matmul.dequant import dequantize

    N, K, r = shape
    qweight, grid, B, A = make_case(N, K, r, bits, dtype, device_of(), seed=N + bits)
    w = dequantize(repack(qweight, bits, K), grid, B, A, dtype, cfg=cfg and tuning.TileConfig.of(cfg))
    assert w.shape == (N, K) and w.dtype == dtype
    assert rel(w, ref.dequantize(qweight, grid, B, A, bits)) < TOL[dtype]


def test_dequantize_shares_one_scratch_buffer_grown_to_the_largest_layer():
    from lords_kernels.lords_matmul import dequant

    dequant.release_scratch()
    dev, dt = torch.device(device_of()), torch.float16
    small = dequant.scratch(dev, dt, 10)
    assert dequant.scratch(dev, dt, 10).data_ptr() == small.data_ptr()
    big = dequant.scratch(dev, dt, 100)
    assert big.numel() == 100 and dequant.scratch(dev, dt, 50).data_ptr() == big.data_ptr()
    assert dequant.scratch_bytes() == 200
    dequant.scratch(dev, torch.bfloat16, 10)  # one buffer per dtype
    assert dequant.scratch_bytes() == 220
    dequant.release_scratch()
    assert dequant.scratch_bytes() == 0


def test_crossover_table_picks_dequant_per_shape(tmp_path):
    import json

    path = tmp_path / "table.json"
    path.write_text(json.dumps({"configs": {}, "crossover": {"640,320,4": 64}}))
    saved = dict(tuning._CROSSOVER)
    try:
        tuning.load_table(str(path))
        assert tuning.pick_config(64, 640, 320, 4, 8).kernel == "dequant"
        assert tuning.pick_config(63, 640, 320, 4, 8).kernel != "dequant"
        assert tuning.pick_config(64, 640, 320, 3, 8).kernel != "dequant"  # other widths: the default crossover
        assert tuning.pick_config(tuning.DEQUANT_MIN_M, 99, 320, 4, 8).kernel == "dequant"
    finally:
        tuning._CROSSOVER.clear()
        tuning._CROSSOVER.update(saved)


def test_crossover_table_refuses_a_bad_count(tmp_path):
    import json

    path = tmp_path / "table.json"
    path.write_text(json.dumps({"configs": {}, "crossover": {"640,320,4": 0}}))
    with pytest.raises(ValueError, match="640,320,4"):
        tuning.load_table(str(path))


# ----------------------------------------------------------------------------------------------- GPU

GPU_SHAPES = [
    (1, 4096, 4096, 32),
    (1, 14336, 4096, 49),
    (1, 4096, 14336, 49),
    (1, 1024, 4096, 12),
    (4, 4096, 4096, 32),
    (16, 14336, 4096, 49),
    (64, 1024, 4096, 12),
    (300, 4096, 4096, 32),
    (2048, 1000, 1000, 7),
    (257, 777, 555, 9),
    (1, 777, 555, 9),
    (4, 14336, 4096, 12),
]  # block-256 parity rank


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "M{}N{}K{}r{}".format(*s))
def test_forward_gpu(shape, bits, dtype):
    M, N, K, r = shape
    qweight, grid, B, A = make_case(N, K, r, bits, dtype, "cuda", seed=M * 3 + bits)
    x = torch.randn(M, K, dtype=dtype, device="cuda")
    bias = torch.randn(N, dtype=dtype, device="cuda")
    kc = repack(qweight, bits, K)
    want = ref.lords_matmul(x, qweight, grid, B, A, bias, bits)
    swap = dict(kernel="gemm_t", BM=16 if M <= 16 else 64, BN=64, num_warps=4, num_stages=3)
    ones = dict(kernel="gemv", BN=128, num_warps=4, num_stages=3, Q_AS_B=False, ONES=True)
    kinds = [(None, None), (3, None), (1, "gemm_t"), (3, "gemm_t")] + ([(1, "ones"), (2, "ones")] if M == 1 else [])
    for split, kind in kinds:
        cfg = None
        if split is not None:
            base = {"gemm_t": swap, "ones": ones}.get(kind) or tuning.pick_config(M, N, K, bits, r)
            cfg = dict(dataclasses.asdict(tuning.TileConfig.of(base)), split_k=split)
        poison = torch.full((M * N + 4096,), float("nan"), dtype=dtype, device="cuda")
        del poison  # the allocator hands this block back: an unwritten output element stays NaN
        y = tk.lords_matmul(x, kc, grid, B, A, bias, cfg)
        torch.cuda.synchronize()
        assert torch.isfinite(y).all()
        assert rel(y, want) < TOL[dtype], (cfg, rel(y, want))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize(
    "shape", [(14336, 4096, 49), (4096, 14336, 24), (777, 555, 9)], ids=lambda s: "N{}K{}r{}".format(*s)
)
def test_dequantize_gpu(shape, bits, dtype):
    from lords_kernels.lords_matmul.dequant import dequantize

    N, K, r = shape
    qweight, grid, B, A = make_case(N, K, r, bits, dtype, "cuda", seed=bits)
    kc = repack(qweight, bits, K)
    want = ref.dequantize(qweight, grid, B, A, bits)
    for cfg in (None, tuning.TileConfig("dequant", BN=64, GROUPS=8, num_warps=4, num_stages=3)):
        torch.full((N * K + 4096,), float("nan"), dtype=dtype, device="cuda")  # freed: unwritten elements stay NaN
        w = dequantize(kc, grid, B, A, dtype, out=torch.empty(N * K, dtype=dtype, device="cuda"), cfg=cfg)
        assert torch.isfinite(w).all()
        assert rel(w, want) < TOL[dtype], cfg


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize(
    "shape", [(2048, 4096, 4096, 32), (16, 1024, 4096, 12), (300, 777, 555, 9)], ids=lambda s: "M{}N{}K{}r{}".format(*s)
)
def test_backward_gpu(shape, bits):
    M, N, K, r = shape
    dtype = torch.bfloat16
    qweight, grid, B, A = make_case(N, K, r, bits, dtype, "cuda", seed=bits)
    x = torch.randn(M, K, dtype=dtype, device="cuda")
    dy = torch.randn(M, N, dtype=dtype, device="cuda")
    rx, rB, rA = ref.lords_matmul_backward(dy, x, qweight, grid, B, A, bits)
    for cublas in (False, True):
        dx, dB, dA = tk.lords_matmul_backward(dy, x, repack(qweight, bits, K), grid, B, A, cublas=cublas)
        assert rel(dx, rx) < TOL[dtype], cublas
        assert rel(dB, rB) < TOL[dtype], cublas
        assert rel(dA, rA) < TOL[dtype], cublas
