"""The ``triton`` backend function, its custom ops and autograd, and the per-model switch.

CPU: Triton's interpreter on small shapes (``TRITON_INTERPRET=1`` set before ``kernels`` is imported).
"""

from __future__ import annotations

import os
import types

import pytest
import torch
from torch import nn

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import lords_kernels  # noqa: E402
from lords.grids import make_grid  # noqa: E402
from lords.packing import pack_codes  # noqa: E402
from lords_kernels.lords_matmul import reference as ref  # noqa: E402
from lords_kernels.lords_matmul import triton as tk  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and not tk.INTERPRET, reason="kernels imported without TRITON_INTERPRET=1 and no GPU"
)
DEV = "cuda" if torch.cuda.is_available() else "cpu"
# bf16 operands, fp32 accumulation: see test_kernels_matmul.TOL
TOL = 1.2e-2


def rel(out, want):
    return ((out.double() - want.double()).norm() / want.double().norm()).item()


class FakeLayer(nn.Module):
    """The attributes LoRDSLinear exposes to a backend (the lead's module may not be merged yet)."""

    def __init__(self, N=40, K=72, r=6, bits=4, dtype=torch.bfloat16, bias=True):
        super().__init__()
        g = torch.Generator().manual_seed(N + K + bits)
        self.in_features, self.out_features, self.bits, self.rank = K, N, bits, r
        self.register_buffer("qweight", pack_codes(torch.randint(0, 2**bits, (N, K), generator=g), bits))
        self.register_buffer("grid", make_grid("nf", bits))
        self.B = nn.Parameter((torch.randn(N, r, generator=g) / r**0.5).to(dtype))
        self.A = nn.Parameter((torch.rand(r, K, generator=g) + 0.5).to(dtype))
        self.bias = nn.Parameter(torch.randn(N, generator=g).to(dtype)) if bias else None
        self.backend = "auto"


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_triton_forward_on_namespace_layer(bits):
    g = torch.Generator().manual_seed(bits)
    N, K, r = 33, 100, 5
    layer = types.SimpleNamespace(
        qweight=pack_codes(torch.randint(0, 2**bits, (N, K), generator=g), bits).to(DEV),
        grid=make_grid("nf", bits).to(DEV),
        B=torch.randn(N, r, generator=g).half().to(DEV),
        A=torch.randn(r, K, generator=g).half().to(DEV),
        bias=None,
        bits=bits,
        in_features=K,
        out_features=N,
    )
    x = torch.randn(2, 5, K).half().to(DEV)
    y = lords_kernels.triton_forward(layer, x)
    want = ref.lords_matmul(x, layer.qweight, layer.grid, layer.B, layer.A, None, bits)
    assert y.shape == (2, 5, N) and y.dtype == torch.float16
    assert rel(y, want) < 2e-3  # fp16 operands (see test_kernels_matmul.TOL)


def test_repack_cache_follows_qweight_writes():
    layer = FakeLayer().to(DEV)
    first = lords_kernels.kernel_codes(layer)
    assert lords_kernels.kernel_codes(layer) is first
    layer.qweight.copy_(pack_codes(torch.zeros(40, 72, dtype=torch.uint8), 4))
    assert lords_kernels.kernel_codes(layer) is not first


def test_autograd_matches_reference_gradients():
    layer = FakeLayer(bits=3).to(DEV)
    x = torch.randn(7, 72, dtype=torch.bfloat16, device=DEV, requires_grad=True)
    y = lords_kernels.triton_forward(layer, x)
    dy = torch.randn_like(y)
    y.backward(dy)
    rx, rB, rA = ref.lords_matmul_backward(
        dy, x.detach(), layer.qweight, layer.grid, layer.B.detach(), layer.A.detach(), 3
    )
    assert rel(x.grad, rx) < TOL
    assert rel(layer.B.grad, rB) < TOL
    assert rel(layer.A.grad, rA) < TOL
    assert rel(layer.bias.grad, dy.double().sum(0)) < TOL


def test_peft_only_scales_get_gradients():
    layer = FakeLayer(bias=False).to(DEV)
    x = torch.randn(5, 72, dtype=torch.bfloat16, device=DEV)  # no grad for x: the dx kernel is skipped
    lords_kernels.triton_forward(layer, x).float().pow(2).sum().backward()
    assert layer.B.grad is not None and layer.A.grad is not None and x.grad is None


def test_fp32_input_round_trips_through_bf16():
    layer = FakeLayer().to(DEV)
    x = torch.randn(3, 72, device=DEV)
    with torch.no_grad():
        y = lords_kernels.triton_forward(layer, x)
    assert y.dtype == torch.float32
    assert rel(y, ref.lords_matmul(x, layer.qweight, layer.grid, layer.B, layer.A, layer.bias, 4)) < TOL


def test_fp32_batch_1_runs_the_gemv_in_fp32_without_casts():
    layer = FakeLayer(N=2048).to(DEV).requires_grad_(False)  # narrower layers take gemm_t at batch 1
    x = torch.randn(1, 1, 72, device=DEV)
    with torch.no_grad():
        y = lords_kernels.triton_forward(layer, x)
    run = lords_kernels.dispatch.plan_of(layer)._runners[(1, torch.bfloat16)]
    assert getattr(run, "fp32_io", False)  # the gemv read x and wrote y in fp32: no cast launches around it
    assert y.dtype == torch.float32 and y.shape == (1, 1, 2048)
    assert rel(y, ref.lords_matmul(x, layer.qweight, layer.grid, layer.B, layer.A, layer.bias, 4)) < TOL


def test_custom_op_fake_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    layer = FakeLayer()
    codes = lords_kernels.kernel_codes(layer)
    real = (codes.lo, codes.hi, layer.grid, layer.B.detach(), layer.A.detach())
    with FakeTensorMode() as mode:
        x = mode.from_tensor(torch.randn(2, 3, 72, dtype=torch.bfloat16))
        args = [mode.from_tensor(t) for t in real]
        y = torch.ops.lords.matmul(x, *args, None, 4, 72)
        assert y.shape == (2, 3, 40) and y.dtype == torch.bfloat16
        dy = mode.from_tensor(torch.randn(2, 3, 40, dtype=torch.bfloat16))
        dx, dB, dA = torch.ops.lords.matmul_backward(dy, x, *args, 4, 72, True, True)
        assert dx.shape == x.shape and dB.shape == (40, 6) and dA.shape == (6, 72)


def test_use_triton_and_use_torch_switch_one_model():
    linear = pytest.importorskip("lords.linear")
    if not hasattr(linear, "LoRDSLinear"):
        pytest.skip("lords.linear has no LoRDSLinear yet")
    g = make_grid("nf", 4)
    model = nn.Sequential(linear.LoRDSLinear(72, 40, 6, 4, g), nn.ReLU(), linear.LoRDSLinear(40, 24, 4, 4, g))
    other = nn.Sequential(linear.LoRDSLinear(72, 40, 6, 4, g))
    for m in model.modules():
        if isinstance(m, linear.LoRDSLinear):
            m.set_codes(torch.randint(0, 16, (m.out_features, m.in_features)))
            with torch.no_grad():
                m.B.normal_()
                m.A.uniform_(0.5, 1.5)
    assert lords_kernels.use_triton(model) is model
    assert {m.backend for m in model.modules() if isinstance(m, linear.LoRDSLinear)} == {"triton"}
    assert other[0].backend == "torch"  # per model, not process-wide
    model = model.to(DEV).to(torch.bfloat16)
    x = torch.randn(3, 72, dtype=torch.bfloat16, device=DEV)
    with torch.no_grad():
        y_triton = model(x)
        y_torch = lords_kernels.use_torch(model)(x)
    assert rel(y_triton, y_torch) < 3 * TOL


def _want(layer, x):
    return ref.lords_matmul(
        x,
        layer.qweight,
        layer.grid,
        layer.B.detach(),
        layer.A.detach(),
        None if layer.bias is None else layer.bias.detach(),
        layer.bits,
    )


def test_plan_is_made_once_and_reused_across_calls():
    layer = FakeLayer(dtype=torch.float32).to(DEV).requires_grad_(False)  # fp32 scales: cast once per dtype
    x = torch.randn(1, 72, dtype=torch.float16, device=DEV)
    y1 = lords_kernels.triton_forward(layer, x)
    plan = lords_kernels.plan_of(layer)
    casts, runners = dict(plan._scales), dict(plan._runners)
    y2 = lords_kernels.triton_forward(layer, x)
    assert lords_kernels.plan_of(layer) is plan
    assert plan._scales[torch.float16][1] is casts[torch.float16][1]  # B cast not redone
    assert plan._runners == runners and len(runners) == 1  # launch arguments bound once per bucket
    assert torch.equal(y1, y2) and rel(y1, _want(layer, x)) < 2e-3  # fp16 operands


def test_plan_follows_writes_to_the_scales_and_codes():
    layer = FakeLayer(dtype=torch.float16).to(DEV).requires_grad_(False)
    x = torch.randn(3, 72, dtype=torch.float16, device=DEV)
    lords_kernels.triton_forward(layer, x)
    layer.B.mul_(2.0)  # in place: the cached cast and the bound launches must follow
    assert rel(lords_kernels.triton_forward(layer, x), _want(layer, x)) < 2e-3
    layer.A.copy_(torch.rand_like(layer.A) + 0.5)
    assert rel(lords_kernels.triton_forward(layer, x), _want(layer, x)) < 2e-3
    layer.qweight.copy_(pack_codes(torch.randint(0, 16, (40, 72)), 4))
    assert rel(lords_kernels.triton_forward(layer, x), _want(layer, x)) < 2e-3


@pytest.fixture
def low_crossover():
    """The FakeLayer shape (40 x 72, 4 bits) crosses over to dequantize + cuBLAS from 8 tokens."""
    from lords_kernels.lords_matmul import tuning

    saved = dict(tuning._CROSSOVER)
    tuning._CROSSOVER["40,72,4"] = 8
    yield 8
    tuning._CROSSOVER.clear()
    tuning._CROSSOVER.update(saved)


def test_plan_takes_dequant_and_cublas_from_the_crossover(low_crossover):
    layer = FakeLayer(dtype=torch.bfloat16).to(DEV).requires_grad_(False)
    plan = lords_kernels.plan_of(layer)
    for M in (low_crossover - 1, low_crossover, 3 * low_crossover):
        x = torch.randn(M, 72, dtype=torch.bfloat16, device=DEV)
        assert rel(lords_kernels.triton_forward(layer, x), _want(layer, x)) < TOL
    assert (-1, torch.bfloat16) in plan._runners  # the dequant bucket, shared by every M above the crossover


def test_training_above_the_crossover_matches_reference_gradients(low_crossover):
    layer = FakeLayer(bits=4).to(DEV)
    x = torch.randn(2, 2 * low_crossover, 72, dtype=torch.bfloat16, device=DEV, requires_grad=True)
    y = lords_kernels.triton_forward(layer, x)
    dy = torch.randn_like(y)
    y.backward(dy)
    rx, rB, rA = ref.lords_matmul_backward(
        dy, x.detach(), layer.qweight, layer.grid, layer.B.detach(), layer.A.detach(), 4
    )
    assert rel(y, _want(layer, x.detach())) < TOL
    assert rel(x.grad, rx) < TOL and rel(layer.B.grad, rB) < TOL and rel(layer.A.grad, rA) < TOL


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_and_compile():
    layer = FakeLayer(N=4096, K=4096, r=32, dtype=torch.float16).cuda()
    x = torch.randn(1, 4096, dtype=torch.float16, device="cuda")
    with torch.no_grad():
        want = lords_kernels.triton_forward(layer, x)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            lords_kernels.triton_forward(layer, x)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = lords_kernels.triton_forward(layer, x)
        graph.replay()
        torch.cuda.synchronize()
        assert rel(out, want) < 1e-6
        compiled = torch.compile(lambda t: lords_kernels.triton_forward(layer, t), fullgraph=True)
        assert rel(compiled(x), want) < 1e-6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("M", [1, 4, 16, 64, 600])
def test_plan_under_cuda_graphs_matches_reference(M):
    """The plan's bound launches (every bucket, the dequant one at M = 600) replay in a graph with fresh inputs."""
    layer = FakeLayer(N=1024, K=4096, r=12, dtype=torch.float16).cuda().requires_grad_(False)
    x = torch.randn(M, 4096, dtype=torch.float16, device="cuda")
    with torch.no_grad():
        lords_kernels.triton_forward(layer, x)  # warm: compile, plan, buffers
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = lords_kernels.triton_forward(layer, x)
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
    assert rel(out, _want(layer, x)) < 2e-3  # fp16 operands


def test_codes_on_host_serve_from_the_plan_alone_and_still_save():
    """``use_triton(codes_on_host=True)``: the stored codes go to host memory, the kernels keep running from the
    plan's copy (not rebuilt), the output is unchanged and ``state_dict`` still holds the same codes."""
    linear = pytest.importorskip("lords.linear")
    g = make_grid("nf", 4)
    model = nn.Sequential(linear.LoRDSLinear(72, 40, 6, 4, g))
    layer = model[0]
    layer.set_codes(torch.randint(0, 16, (40, 72), generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        layer.B.normal_()
        layer.A.uniform_(0.5, 1.5)
    model = model.to(DEV).to(torch.bfloat16)
    codes = layer.qweight.clone()
    x = torch.randn(3, 72, dtype=torch.bfloat16, device=DEV)
    with torch.no_grad():
        want = lords_kernels.use_triton(model)(x)
        plan = lords_kernels.plan_of(layer)
        stored = layer.qweight
        lords_kernels.use_triton(model, codes_on_host=True)
        assert layer.qweight is not stored and layer.qweight.device.type == "cpu"
        got = model(x)
    assert lords_kernels.plan_of(layer) is plan  # served from the plan's codes, not repacked from the host copy
    assert torch.equal(got, want)
    assert torch.equal(model.state_dict()["0.qweight"].cpu(), codes.cpu())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_launch_probe_launches_the_compiled_xa_kernel_directly_with_the_jit_launchs_output():
    from benchmarks.kernels.launch_probe import probe_shape
    from benchmarks.kernels.peers import Peers

    rows = probe_shape(torch, 192, 576, Peers("cuda"), calls=5, rounds=1)
    direct = next(r for r in rows if r["impl"] == "xa_direct")
    assert "error" not in direct, direct["error"]
    assert direct["equal_to_jit"] and all(r["us_eager"] > 0 for r in rows)


def test_a_launch_refuses_constexprs_left_unbound():
    from lords_kernels.lords_matmul.forward import _xa_kernel
    from lords_kernels.lords_matmul.launch import Launch

    with pytest.raises(ValueError, match="constexpr"):
        Launch(_xa_kernel, R=16)  # BK missing


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("M", [1, 4, 600])
def test_direct_launches_give_the_jit_launchs_output_bit_for_bit(M):
    """The first call of each specialisation goes through Triton's JIT; later ones launch the kept binary. Both
    agree bit for bit, also for an x that is not 16-byte aligned and (batch 1) an fp32 x, which the JIT compiles
    separately."""
    layer = FakeLayer(N=1024, K=4096, r=12, dtype=torch.float16).cuda().requires_grad_(False)
    plain = torch.randn(M, 4096, dtype=torch.float16, device="cuda")
    offset = torch.randn(M * 4096 + 1, dtype=torch.float16, device="cuda")[1:].view(M, 4096)  # 2 bytes off
    xs = [plain, offset] + ([plain.float()] if M == 1 else [])
    with torch.no_grad():
        for x in xs:
            first = lords_kernels.triton_forward(layer, x)
            again = lords_kernels.triton_forward(layer, x)
            tol = 2e-3 if x.dtype == torch.float16 else TOL  # fp32 x is computed in bf16
            assert torch.equal(first, again) and rel(first, _want(layer, x.half())) < tol
    plan = lords_kernels.plan_of(layer)
    binaries = [
        len(launch.binaries)
        for (_, dtype), run in plan._runners.items()
        if dtype == torch.float16
        for launch in run.launches
    ]
    # the fused kernels: one binary for the aligned x, one for the other; the dequant pass never sees x: one
    assert binaries and min(binaries) == (1 if M >= plan.crossover else 2)


def test_peft_through_the_kernels_keeps_nothing_weight_sized_for_backward():
    """Measured with autograd's saved-tensor hooks: what a LoRDS layer's forward keeps for backward when only B, A
    train (PEFT) on the Triton path, its own parameters, buffers and repacked codes excluded. The cost model's
    PEFT_SAVED_BYTES is this figure."""
    from benchmarks.scale.cost_model import PEFT_SAVED_BYTES

    layer = FakeLayer(N=64, K=128, r=6, bias=False).to(DEV)
    plan = lords_kernels.dispatch.plan_of(layer)
    own = {t.data_ptr() for t in [*layer.parameters(), *layer.buffers(), plan.codes.lo, plan.codes.hi]}
    kept = []

    def pack(t):
        if t.numel() >= 64 * 128 // 8 and t.data_ptr() not in own:
            kept.append(t.numel() * t.element_size())
        return t

    x = torch.randn(4, 128, dtype=torch.bfloat16, device=DEV, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lords_kernels.triton_forward(layer, x).float().sum().backward()
    assert layer.B.grad is not None and sum(kept) / (64 * 128) == PEFT_SAVED_BYTES == 0
