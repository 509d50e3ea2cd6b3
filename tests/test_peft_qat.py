import torch

from lords import LoRDSLinear, LordsConfig, mark_only_scales_trainable, quantize_
from lords.qat import QATLinear, convert_qat, prepare_qat


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
    prepare_qat(tiny_model, cfg)
    qat = [m for m in tiny_model.modules() if isinstance(m, QATLinear)]
    assert len(qat) == 14
    loss = tiny_model(tokens, labels=tokens).loss
    loss.backward()
    assert all(m.weight.grad is not None and m.B.grad is not None and m.A.grad.abs().sum() > 0 for m in qat)
    with torch.no_grad():
        expected = qat[0].fake_quantized()
        ref = tiny_model(tokens).logits
    convert_qat(tiny_model)
    converted = [m for m in tiny_model.modules() if isinstance(m, LoRDSLinear)][0]
    torch.testing.assert_close(converted.dequantized_weight(), expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(tokens).logits, ref, rtol=1e-4, atol=1e-4)
