"""The four PEFT methods of the table on a tiny random Llama: equal trainable floats, one training step each, a
save/reload that gives back the same model; LoRDS PEFT leaves the codes Q bit for bit; LoftQ and QPiSSA start closer
to the float weights than QLoRA; the decode latency function runs on every served form."""

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")

from lords.lowrank import parity_rank  # noqa: E402
from lords_pipelines.evaluation.latency import decode_ms_per_token  # noqa: E402
from lords_pipelines.models import tiny_llama  # noqa: E402
from lords_pipelines.peft_methods import (  # noqa: E402
    METHODS,
    load_trained,
    merged,
    prepare,
    save_trained,
    target_ranks,
)
from lords_pipelines.stages.common import bpe_tokenizer  # noqa: E402
from lords_pipelines.tables.peft_train import codes_of, train  # noqa: E402

BLOCK = 32


@pytest.fixture(scope="module")
def float_model():
    return tiny_llama(seed=0)


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer(512)


def _items(tok, n=8):
    from lords_pipelines.data.peft_splits import roman
    from lords_pipelines.stages.datamodule import encode_pair

    return [encode_pair(tok, f"Roman numeral of {k}:", " " + roman(k), 32) for k in range(1, n + 1)]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_every_method_trains_the_same_floats_as_lords_at_the_parity_rank(float_model):
    expected = sum(
        parity_rank(m.out_features, m.in_features, BLOCK) * (m.out_features + m.in_features)
        for name, m in float_model.named_modules()
        if isinstance(m, torch.nn.Linear) and name != "lm_head"
    )
    ranks = target_ranks(float_model, BLOCK)
    assert len(ranks) == 14 and "lm_head" not in ranks  # 7 linears in each of 2 decoder layers
    for method in METHODS:
        p = prepare(float_model, method, block_size=BLOCK)
        assert p.trainable_floats == expected, method
        assert p.ranks == ranks


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_a_step_and_reloads_as_trained(method, float_model, tok, tmp_path):
    p = prepare(float_model, method, block_size=BLOCK, seed=0)
    before = {n: q.detach().clone() for n, q in p.model.named_parameters() if q.requires_grad}
    stats = train(p.model, _items(tok), tok, steps=1, batch_size=4, lr=1e-2, seed=0)
    assert stats["steps"] == 1 and stats["tokens"] > 0 and stats["final_loss"] == stats["final_loss"]  # not NaN
    after = dict(p.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before), "nothing trained"
    assert all(not q.requires_grad for n, q in after.items() if n not in before)  # the base stayed frozen
    save_trained(p, tmp_path / "saved")
    reloaded = load_trained(float_model, method, tmp_path / "saved", block_size=BLOCK)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_logits(reloaded, ids), _logits(p.model, ids), rtol=0, atol=1e-5)


def test_lords_peft_leaves_the_codes_bit_for_bit_and_moves_B_and_A(float_model, tok):
    p = prepare(float_model, "lords_peft", block_size=BLOCK)
    codes = codes_of(p.model)
    scales = {n: q.detach().clone() for n, q in p.model.named_parameters() if n.endswith((".A", ".B"))}
    train(p.model, _items(tok), tok, steps=2, batch_size=4, lr=1e-2, seed=0)
    assert codes and all(torch.equal(codes[n], q) for n, q in codes_of(p.model).items())
    assert all(not torch.equal(scales[n], q) for n, q in p.model.named_parameters() if n in scales)


def test_lords_adapter_holds_only_B_A_and_reloads_onto_its_saved_base(float_model, tok, tmp_path):
    from lords import load_adapter, load_quantized, save_adapter, save_quantized

    p = prepare(float_model, "lords_peft", block_size=BLOCK)
    save_quantized(p.model, tmp_path / "base")
    train(p.model, _items(tok), tok, steps=1, batch_size=4, lr=1e-2, seed=0)
    save_adapter(p.model, tmp_path / "adapter", base=tmp_path / "base")
    model = load_adapter(load_quantized(tmp_path / "base", tiny_llama(seed=5))[0], tmp_path / "adapter")
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(_logits(model, ids), _logits(p.model, ids), rtol=0, atol=1e-5)


def _weight_error(p, float_model):
    """Relative error of each layer's effective weight (base + scaling·B·A) against the float weight, summed."""
    import bitsandbytes.functional as bnbf

    err = 0.0
    for name in p.ranks:
        layer = p.model.base_model.model.get_submodule(name)
        base = bnbf.dequantize_4bit(layer.base_layer.weight.data, layer.base_layer.weight.quant_state).float()
        delta = layer.get_delta_weight("default").float()
        w = float_model.get_submodule(name).weight.float()
        err += float((base + delta.detach() - w).norm() / w.norm())
    return err


def test_loftq_and_qpissa_start_closer_to_the_float_weights_than_qlora(float_model):
    errors = {
        m: _weight_error(prepare(float_model, m, block_size=BLOCK), float_model) for m in ("qlora", "loftq", "qpissa")
    }
    assert errors["loftq"] < errors["qlora"] and errors["qpissa"] < errors["qlora"], errors


def test_a_merged_lora_is_a_plain_nf4_model_within_nf4_rounding_of_the_unmerged_one(float_model, tok):
    p = prepare(float_model, "qlora", block_size=BLOCK)
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(3))
    nf4_error = (_logits(p.model, ids) - _logits(float_model, ids)).norm()  # the untrained LoRA adds nothing
    train(p.model, _items(tok), tok, steps=2, batch_size=4, lr=1e-2, seed=0)
    trained = _logits(p.model, ids)
    model = merged(p.model)
    assert not any("lora" in n for n, _ in model.named_parameters())
    # The merge re-quantizes base + B·A to NF4: an error of the size NF4 makes on the float model, no more.
    assert (_logits(model, ids) - trained).norm() < 1.5 * nf4_error


@pytest.mark.parametrize("method", ["lords_peft", "qlora"])
def test_decode_latency_runs_on_the_served_model_and_leaves_it_in_its_mode(method, float_model):
    p = prepare(float_model, method, block_size=BLOCK)
    p.model.train()
    ms = decode_ms_per_token(p.model, torch.arange(1, 9)[None], new_tokens=4, repeats=2, warmup=1)
    assert ms > 0 and p.model.training
    with pytest.raises(ValueError):
        decode_ms_per_token(p.model, torch.arange(1, 9)[None].repeat(2, 1))


def test_lords_peft_can_start_from_algorithm_1_which_fits_the_float_weights_better(float_model):
    from lords import RefineConfig
    from lords.linear import LoRDSLinear

    def error(p):
        return sum(
            float((m.dequantized_weight() - float_model.get_submodule(n).weight).norm())
            for n, m in p.model.named_modules()
            if isinstance(m, LoRDSLinear)
        )

    plain = prepare(float_model, "lords_peft", block_size=BLOCK)
    refined = prepare(float_model, "lords_peft", block_size=BLOCK, lords_refine=RefineConfig(steps=20, lr=1e-2))
    assert "Algorithm 1" in refined.init and refined.trainable_floats == plain.trainable_floats
    assert error(refined) < error(plain)


@pytest.mark.parametrize("method", METHODS)
def test_at_3_bits_every_method_trains_on_a_3_bit_base_and_reloads(method, float_model, tok, tmp_path):
    """bitsandbytes has no 3-bit layer: the LoRA methods' base is the project's block-wise NF3 ``BlockLinear``."""
    from lords.linear import BlockLinear, LoRDSLinear

    p = prepare(float_model, method, bits=3, block_size=BLOCK, seed=0)
    kind = LoRDSLinear if method == "lords_peft" else BlockLinear
    layers = [m for m in p.model.modules() if isinstance(m, kind)]
    assert len(layers) == 14 and {m.bits for m in layers} == {3}
    assert p.base == ("lords" if method == "lords_peft" else "lords-nf3")
    train(p.model, _items(tok), tok, steps=1, batch_size=4, lr=1e-2, seed=0)
    save_trained(p, tmp_path / "saved")
    reloaded = load_trained(float_model, method, tmp_path / "saved", block_size=BLOCK, bits=3)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_logits(reloaded, ids), _logits(p.model, ids), rtol=0, atol=1e-5)
    assert merged(p.model) is None or method == "lords_peft"  # peft cannot merge into a BlockLinear


def test_loftq_at_3_bits_keeps_loftq_s_codes_in_its_base(float_model):
    """Re-quantizing LoftQ's dequantized ``Q`` block-wise gives back its codes: the base is LoftQ's ``Q``."""
    from lords.linear import BlockLinear
    from lords.loftq import LoftQConfig, quantize_loftq

    p = prepare(float_model, "loftq", bits=3, block_size=BLOCK)
    name = "model.layers.0.mlp.up_proj"
    base = next(
        m for n, m in p.model.named_modules() if n.endswith(name + ".base_layer") and isinstance(m, BlockLinear)
    )
    config = LoftQConfig(bits=3, block_size=BLOCK, rank=p.ranks[name], iters=1)  # prepare's loftq_iters
    module, _ = quantize_loftq(name, float_model.get_submodule(name), config)
    assert torch.equal(base.codes(), module.codes())
