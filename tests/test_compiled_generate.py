"""Compiled generation of a LoRDS model: ``torch.compile`` through the Triton backend with a static KV cache.

What must hold: the LoRDS linear traces into one graph (no break), a compiled model generates the same greedy
tokens as the eager one, and a second ``generate`` after the warm-up compiles nothing. The scales stay as
``quantize_`` stores them (fp32, ``LordsConfig.scale_dtype``'s default) beside half activations: the kernels round
them as they load them, so no cast kernel sits in the compiled graph.

CPU: Triton's interpreter (``TRITON_INTERPRET=1``) with dynamo's ``eager`` / ``aot_eager`` backends; GPU (``gpu``
mark): inductor in ``reduce-overhead`` mode (CUDA graphs), fp16.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import lords  # noqa: E402
import lords_kernels  # noqa: E402
from lords_kernels.lords_matmul import triton as tk  # noqa: E402
from lords_pipelines.models import tiny_llama  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and not tk.INTERPRET, reason="kernels imported without TRITON_INTERPRET=1 and no GPU"
)
CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"


def _quantized(dtype: torch.dtype, device: str = DEV):
    """The tiny Llama in ``dtype``, LoRDS 4-bit (block 16: its 64-wide k/v layers take rank 2), Triton backend."""
    model = tiny_llama(seed=0).to(device=device, dtype=dtype)
    lords.quantize_(model, lords.LordsConfig(bits=4, block_size=16), progress=False)
    return lords_kernels.use_triton(model)


def _layers(model):
    return [m for m in model.modules() if isinstance(m, lords.LoRDSLinear)]


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield torch._dynamo.utils.counters
    torch._dynamo.config.error_on_recompile = False
    torch._dynamo.reset()


def test_quantized_scales_stay_fp32_beside_half_activations():
    model = _quantized(torch.bfloat16)
    layer = _layers(model)[0]
    assert layer.B.dtype == torch.float32 and layer.A.dtype == torch.float32
    assert layer.backend == "triton"


@pytest.mark.parametrize("M", [1, 3])
def test_linear_compiles_fullgraph_and_matches_eager(M, fresh_dynamo):
    model = _quantized(torch.bfloat16)
    layer = _layers(model)[0]
    x = torch.randn(M, layer.in_features, dtype=torch.bfloat16, device=DEV)
    with torch.no_grad():
        want = layer(x)
        got = torch.compile(layer, fullgraph=True, backend="aot_eager")(x)
    assert not fresh_dynamo["graph_break"]
    assert got.dtype == want.dtype
    rel = ((got.double() - want.double()).norm() / want.double().norm()).item()
    assert rel < (1e-6 if CUDA else 1e-2)  # interpreter: in-kernel fp32 scales vs the plan's bf16 casts


def test_decode_step_of_the_whole_model_has_no_graph_break():
    from transformers import StaticCache

    model = _quantized(torch.bfloat16)
    ids = torch.randint(0, 512, (2, 8), generator=torch.Generator().manual_seed(1)).to(DEV)
    cache = StaticCache(config=model.config, max_cache_len=24)
    torch._dynamo.reset()
    with torch.no_grad():
        out = model(ids, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        explained = torch._dynamo.explain(model)(
            token, past_key_values=cache, cache_position=torch.tensor([8], device=DEV), use_cache=True
        )
    torch._dynamo.reset()
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


def _generate(model, ids, new_tokens):
    return model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        cache_implementation="static",
        disable_compile=True,
        pad_token_id=0,
    )


def _compiled_generate_matches_eager(dtype, backend, mode, counters):
    model = _quantized(dtype)
    ids = torch.randint(0, 512, (2, 8), generator=torch.Generator().manual_seed(2)).to(DEV)
    with torch.no_grad():
        eager = _generate(model, ids, 8)
        model.forward = torch.compile(model.forward, fullgraph=True, backend=backend, mode=mode)
        compiled = _generate(model, ids, 8)  # warm-up: compiles prefill and decode
        graphs = counters["stats"]["unique_graphs"]
        assert graphs >= 1
        torch._dynamo.config.error_on_recompile = True
        again = _generate(model, ids, 8)
    assert counters["stats"]["unique_graphs"] == graphs  # nothing compiled after the warm-up
    assert not counters["graph_break"]
    assert torch.equal(compiled, eager)
    assert torch.equal(again, eager)


def test_compiled_generate_matches_eager_without_recompiles(fresh_dynamo):
    _compiled_generate_matches_eager(torch.bfloat16, "aot_eager", None, fresh_dynamo)


def test_generate_compiles_a_static_cache_model_by_itself():
    """transformers compiles the decode step itself for a static cache unless the model's quantizer says it cannot
    be compiled; ``quantize_`` attaches the lords quantizer (for ``save_pretrained``)."""
    model = _quantized(torch.bfloat16)
    quantizer = getattr(model, "hf_quantizer", None)
    assert quantizer is None or quantizer.is_compileable  # else generate() silently runs the model eagerly


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_compiled_generate_under_cuda_graphs_matches_eager(fresh_dynamo):
    _compiled_generate_matches_eager(torch.float16, "inductor", "reduce-overhead", fresh_dynamo)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("M", [1, 4, 600])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fp32_scales_give_the_cast_scales_result_bit_for_bit(M, dtype):
    """gemv (M = 1, N >= 2048), gemm_t (M = 4) and dequant + cuBLAS (M = 600): fp32 B, A rounded in the kernels
    equal B, A cast before the call."""
    from lords.grids import make_grid
    from lords_kernels.lords_matmul.layout import repack_codes

    g = torch.Generator().manual_seed(M)
    N, K, r = 4096, 1024, 24
    codes = repack_codes(torch.randint(0, 16, (N, K), generator=g), 4)
    codes = type(codes)(codes.lo.cuda(), codes.hi.cuda(), 4, K)
    grid = make_grid("nf", 4).cuda()
    B = (torch.randn(N, r, generator=g) / r**0.5).cuda()
    A = (torch.rand(r, K, generator=g) + 0.5).cuda()
    x = torch.randn(M, K, generator=g).to("cuda", dtype)
    got = tk.lords_matmul(x, codes, grid, B, A, None)
    want = tk.lords_matmul(x, codes, grid, B.to(dtype), A.to(dtype), None)
    assert torch.equal(got, want)


@pytest.mark.parametrize("kernel", ["gemv", "gemm_t", "dequant"])
def test_fp32_scales_match_cast_scales_on_every_forward_kernel(kernel):
    """The kernels take fp32 ``B``, ``A`` beside bf16 activations (what the compiled op now passes): the result is
    the cast scales' within bf16 rounding (the interpreter truncates its casts; the GPU test checks bit equality)."""
    from lords.grids import make_grid
    from lords_kernels.lords_matmul.layout import repack_codes
    from lords_kernels.lords_matmul.tuning import TileConfig

    g = torch.Generator().manual_seed(7)
    N, K, r = 96, 200, 5
    codes = repack_codes(torch.randint(0, 16, (N, K), generator=g), 4)
    codes = type(codes)(codes.lo.to(DEV), codes.hi.to(DEV), 4, K)
    grid = make_grid("nf", 4).to(DEV)
    B = (torch.randn(N, r, generator=g) / r**0.5).to(DEV)
    A = (torch.rand(r, K, generator=g) + 0.5).to(DEV)
    M = 1 if kernel == "gemv" else 3
    x = torch.randn(M, K, generator=g).to(DEV, torch.bfloat16)
    cfg = {
        "gemv": TileConfig("gemv", BN=32, split_k=2),
        "gemm_t": TileConfig("gemm_t", BN=32, BM=16),
        "dequant": TileConfig("dequant", BN=32, GROUPS=1),
    }[kernel]
    got = tk.lords_matmul(x, codes, grid, B, A, None, config=cfg)
    want = tk.lords_matmul(x, codes, grid, B.to(torch.bfloat16), A.to(torch.bfloat16), None, config=cfg)
    rel = ((got.double() - want.double()).norm() / want.double().norm()).item()
    assert rel < 1e-2
    if CUDA:
        assert torch.equal(got, want)
