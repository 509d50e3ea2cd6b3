import pytest
import torch

from lords import (
    BlockLinear,
    BlockwiseConfig,
    LordsConfig,
    LoRDSLinear,
    MixedPrecisionConfig,
    QATConfig,
    QATLinear,
    mark_only_scales_trainable,
    quantize_,
)
from lords.errors import ConfigError


def test_peft_trains_only_B_and_A_and_the_update_is_high_rank(tiny_model, tokens):
    quantize_(tiny_model, LordsConfig(bits=4, block_size=16), progress=False)
    n_train = mark_only_scales_trainable(tiny_model)
    layers = [m for m in tiny_model.modules() if isinstance(m, LoRDSLinear)]
    assert n_train == sum(m.B.numel() + m.A.numel() for m in layers)
    layer = layers[0]
    before = layer.dequantized_weight().clone()
    codes = layer.qweight.clone()
    opt = torch.optim.SGD([p for p in tiny_model.parameters() if p.requires_grad], lr=1.0)
    loss = tiny_model(tokens, labels=tokens).loss
    loss.backward()
    opt.step()
    assert torch.equal(layer.qweight, codes)  # Q is frozen
    delta = layer.dequantized_weight() - before
    # ΔW = Q ⊙ (B'A' − BA): its rank exceeds the rank of the scale change (≤ 2r).
    assert torch.linalg.matrix_rank(delta) > 2 * layer.rank


def test_qat_trains_latent_weights_and_scales_then_converts(tiny_model, tokens):
    cfg = LordsConfig(bits=3, block_size=16)
    quantize_(tiny_model, QATConfig(cfg, "prepare"), progress=False)
    qat = [m for m in tiny_model.modules() if isinstance(m, QATLinear)]
    assert len(qat) == 14
    loss = tiny_model(tokens, labels=tokens).loss
    loss.backward()
    assert all(m.weight.grad is not None and m.scale.B.grad is not None and m.scale.A.grad.abs().sum() > 0 for m in qat)
    with torch.no_grad():
        expected = qat[0].fake_quantized()
        ref = tiny_model(tokens).logits
    quantize_(tiny_model, QATConfig(cfg, "convert"), progress=False)
    converted = [m for m in tiny_model.modules() if isinstance(m, LoRDSLinear)][0]
    torch.testing.assert_close(converted.dequantized_weight(), expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(tokens).logits, ref, rtol=1e-4, atol=1e-4)


def test_qat_convert_stores_scales_in_the_configs_dtype(tiny_model):
    cfg = LordsConfig(bits=3, block_size=16, scale_dtype="bfloat16")
    quantize_(tiny_model, QATConfig(cfg, "prepare"), progress=False)
    quantize_(tiny_model, QATConfig(cfg, "convert"), progress=False)
    layers = [m for m in tiny_model.modules() if isinstance(m, LoRDSLinear)]
    assert layers and {m.B.dtype for m in layers} == {torch.bfloat16}


def test_blockwise_qat_trains_block_scales_and_converts_to_block_layers(tiny_model, tokens):
    cfg = MixedPrecisionConfig(base=BlockwiseConfig(block_size=16), bits=3.0)  # 4 bits in layer 0, 2 in layer 1
    quantize_(tiny_model, QATConfig(cfg, "prepare"), progress=False)
    tiny_model(tokens, labels=tokens).loss.backward()
    qat = [m for m in tiny_model.modules() if isinstance(m, QATLinear)]
    assert all(m.scale.scales.grad.abs().sum() > 0 for m in qat)
    quantize_(tiny_model, QATConfig(cfg, "convert"), progress=False)
    bits = {name: m.bits for name, m in tiny_model.named_modules() if isinstance(m, BlockLinear)}
    assert len(bits) == 14 and {b for n, b in bits.items() if ".layers.0." in n} == {4}
    assert {b for n, b in bits.items() if ".layers.1." in n} == {2}


def test_qat_refuses_to_convert_to_another_method(tiny_model):
    quantize_(tiny_model, QATConfig(LordsConfig(bits=3, block_size=16), "prepare"), progress=False)
    with pytest.raises(ConfigError, match="prepared as LordsConfig"):
        quantize_(tiny_model, QATConfig(BlockwiseConfig(bits=3, block_size=16), "convert"), progress=False)


@pytest.mark.parametrize(
    "make",
    [
        lambda r: LordsConfig(bits=3, block_size=16, calib_tokens=64, sample_tokens=16, refine=r),
        lambda r: BlockwiseConfig(bits=3, block_size=16, calib_tokens=64, refine=r),
    ],
)
@pytest.mark.parametrize("stacked", [False, True], ids=["per-layer", "stacked"])
def test_qat_from_a_calibrated_config_starts_at_the_ptq_model(make, stacked, tokens):
    """Prepare then convert, with no training between, gives exactly what PTQ with the same config gives, with
    Algorithm 1 run layer by layer or stacked over same-shape layers (the GPU default) alike."""
    from lords import RefineConfig
    from lords_pipelines.models import tiny_llama

    cfg = make(RefineConfig(steps=5, lr=1e-2, objective="act_diag"))
    ptq, qat = tiny_llama(seed=0), tiny_llama(seed=0)
    quantize_(ptq, cfg, calib_ids=tokens, progress=False, batch_refine=stacked)
    quantize_(qat, QATConfig(cfg, "prepare"), calib_ids=tokens, progress=False, batch_refine=stacked)
    quantize_(qat, QATConfig(cfg, "convert"), progress=False)
    a, b = ptq.state_dict(), qat.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_qat_from_a_calibrated_config_needs_calibration_tokens(tiny_model):
    from lords import RefineConfig

    cfg = LordsConfig(bits=3, block_size=16, refine=RefineConfig(steps=2, objective="act_diag"))
    with pytest.raises(ConfigError, match="calib_ids"):
        quantize_(tiny_model, QATConfig(cfg, "prepare"), progress=False)


def _autograd_fake_quantize(W, S, grid):
    """The straight-through expression as autograd runs it: what ``FakeQuantize`` must equal bit for bit."""
    from lords.blockwise import safe_scale
    from lords.grids import nearest_code

    u = W / safe_scale(S)
    q = grid[nearest_code(u.detach(), grid).long()]
    return S * (u + (q - u).detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16 S (autocast)"])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_fake_quantize_gives_autograds_values_and_gradients_bit_for_bit(bits, dtype):
    from lords.grids import make_grid
    from lords.qat import FakeQuantize

    g = torch.Generator().manual_seed(bits)
    grid = make_grid("nf", bits)
    W0 = torch.randn(48, 80, generator=g)
    B0, A0 = torch.randn(48, 6, generator=g), torch.randn(6, 80, generator=g)
    up = torch.randn(48, 80, generator=g)
    outs = []
    for fq in (_autograd_fake_quantize, FakeQuantize.apply):
        W, B, A = (t.clone().requires_grad_() for t in (W0, B0, A0))
        S = (B @ A).to(dtype)  # B·A runs in bf16 under autocast
        S = torch.where(torch.arange(80) % 7 == 0, torch.zeros_like(S), S)  # exact zeros: the divide-by-1 branch
        y = fq(W, S, grid)
        (y * up).sum().backward()
        outs.append((y.detach(), W.grad, B.grad, A.grad))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_lords_qat_keeps_five_bytes_per_weight_for_backward_under_bf16_autocast():
    """Measured with autograd's saved-tensor hooks, under the GPU stages' precision (bf16 autocast, here on the CPU):
    the weight-sized tensors a LoRDS QATLinear keeps for backward, its parameters and buffers excluded: S = B·A in
    bf16 (2), the codes (1), the bf16 weight F.linear keeps for ∂x (2). The cost model's QAT_SAVED_BYTES is this."""
    from benchmarks.scale.cost_model import QAT_SAVED_BYTES

    model = torch.nn.Sequential(torch.nn.Linear(128, 64, bias=False))
    quantize_(model, QATConfig(LordsConfig(bits=3, block_size=16), "prepare"), progress=False)
    layer = model[0]
    own = {t.data_ptr() for t in [*layer.parameters(), *layer.buffers()]}
    kept = {}

    def pack(t):
        if t.numel() >= 64 * 128 and t.data_ptr() not in own:
            kept[t.data_ptr()] = t.numel() * t.element_size()
        return t

    x = torch.randn(4, 128, requires_grad=True)  # an activation: F.linear keeps the weight for ∂x
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    y.float().sum().backward()
    assert sum(kept.values()) / (64 * 128) == QAT_SAVED_BYTES == 5
