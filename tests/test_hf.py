"""transformers integration: after ``import lords``, ``save_pretrained`` / ``from_pretrained`` round-trip a lords model,
quantize-on-load equals ``quantize_``, and what cannot be honoured is refused by name."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM  # noqa: E402

import lords  # noqa: E402  (registers quant_method "lords")
from lords import BlockwiseConfig, LordsConfig, LordsQuantConfig, quantize_  # noqa: E402
from lords.errors import CheckpointError, ConfigError, UnsupportedModuleError  # noqa: E402
from lords.integrity import shard_files  # noqa: E402
from lords.linear import BlockLinear, LoRDSLinear  # noqa: E402
from lords_pipelines.models import tiny_llama  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


@pytest.fixture
def lords_dir(tmp_path, tiny_model, tokens):
    quantize_(tiny_model, LordsConfig(bits=3, block_size=16), progress=False)
    tiny_model.save_pretrained(tmp_path / "q", max_shard_size="200KB")
    return tmp_path / "q", _logits(tiny_model, tokens)


def test_save_pretrained_writes_config_with_quantization_config_and_sharded_safetensors(lords_dir):
    path, _ = lords_dir
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "lords" and qc["config"]["bits"] == 3 and qc["config"]["block_size"] == 16
    assert qc["modules"]["model.layers.0.self_attn.q_proj"]["rank"] == 4 and len(qc["modules"]) == 14
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == len(shard_files(path)) > 1


def test_from_pretrained_builds_quantized_modules_and_gives_identical_logits(lords_dir, tokens):
    path, logits = lords_dir
    model = AutoModelForCausalLM.from_pretrained(path)
    assert isinstance(model.model.layers[1].mlp.down_proj, LoRDSLinear)
    assert not [k for k in model.state_dict() if k.endswith("_proj.weight")]  # no float weight of a quantized layer
    assert torch.equal(_logits(model, tokens), logits)


def test_from_pretrained_honours_dtype_and_device_map(lords_dir, tokens):
    path, logits = lords_dir
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map="auto")
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.model.layers[0].self_attn.q_proj.B.dtype == torch.float32  # scales keep their stored dtype
    out = _logits(model, tokens)
    assert out.dtype == torch.bfloat16 and out.device.type == "cpu"
    assert float((out.float() - logits).norm() / logits.norm()) < 5e-2  # bf16 activations, same weights


def test_a_tampered_shard_is_refused_by_name(lords_dir):
    path, _ = lords_dir
    shard = shard_files(path)[1]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"shard {shard.name}: tensor '.*' does not match its SHA-256"):
        AutoModelForCausalLM.from_pretrained(path)


@pytest.mark.parametrize(
    "config",
    [
        LordsConfig(bits=3, block_size=16),
        BlockwiseConfig(bits=4, block_size=32),
        lords.MixedPrecisionConfig(LordsConfig(block_size=16), bits=3.0),
    ],
    ids=["lords", "blockwise", "mixed"],
)
def test_quantize_on_load_equals_quantize_(tmp_path, tokens, config):
    tiny_llama(seed=0).save_pretrained(tmp_path / "float")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "float", quantization_config=LordsQuantConfig(config))
    reference = tiny_llama(seed=0)
    quantize_(reference, config, progress=False)
    assert model.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())
    model.save_pretrained(tmp_path / "q")  # and the result saves as a lords folder
    assert torch.equal(
        _logits(AutoModelForCausalLM.from_pretrained(tmp_path / "q"), tokens), _logits(reference, tokens)
    )


def test_quantize_on_load_never_holds_two_float_linears(tmp_path, monkeypatch):
    tiny_llama(seed=0).save_pretrained(tmp_path / "float")
    seen = []
    convert = lords.hf.LordsQuantize.convert

    def spy(self, input_dict, model=None, **kwargs):
        seen.append(
            sum(
                1
                for n, m in model.named_modules()
                if type(m) is torch.nn.Linear and n != "lm_head" and not m.weight.is_meta
            )
        )  # float linears already in memory when one more arrives
        return convert(self, input_dict, model=model, **kwargs)

    monkeypatch.setattr(lords.hf.LordsQuantize, "convert", spy)
    AutoModelForCausalLM.from_pretrained(
        tmp_path / "float", quantization_config=LordsQuantConfig(LordsConfig(block_size=16))
    )
    assert seen == [0] * 14  # each weight is quantized as it loads, the model's 14 linears one at a time


def test_quantize_on_load_keeps_biases_loaded_after_their_weights(tmp_path, tokens):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        tie_word_embeddings=False,
    )
    float_model = Qwen2ForCausalLM(cfg)
    float_model.model.layers[0].self_attn.q_proj.bias.data.normal_()  # q/k/v carry biases in Qwen2
    float_model.save_pretrained(tmp_path / "float")
    config = LordsConfig(bits=4, block_size=16)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "float", quantization_config=LordsQuantConfig(config))
    quantize_(float_model, config, progress=False)
    assert torch.equal(model.model.layers[0].self_attn.q_proj.bias, float_model.model.layers[0].self_attn.q_proj.bias)
    assert torch.equal(_logits(model, tokens), _logits(float_model, tokens))


def test_quantize_on_load_refuses_a_calibrated_config(tmp_path):
    tiny_llama(seed=0).save_pretrained(tmp_path / "float")
    calibrated = LordsConfig(bits=3, refine=lords.RefineConfig(steps=5, objective="act_diag"))
    with pytest.raises(ConfigError, match="quantize-on-load is data-free.*calib_ids"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "float", quantization_config=LordsQuantConfig(calibrated))


def test_a_blockwise_folder_loads_block_linear(tmp_path, tiny_model, tokens):
    quantize_(tiny_model, BlockwiseConfig(bits=4, block_size=32), progress=False)
    tiny_model.save_pretrained(tmp_path / "nf")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "nf")
    assert isinstance(model.model.layers[0].mlp.up_proj, BlockLinear)
    assert torch.equal(_logits(model, tokens), _logits(tiny_model, tokens))


def _tiny_mixtral():
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    return MixtralForCausalLM(
        MixtralConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            vocab_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_local_experts=4,
        )
    )


def test_fused_moe_experts_are_refused_by_name():
    with pytest.raises(
        UnsupportedModuleError, match=r"would stay in float: \[.model.layers.0.mlp.experts.gate_up_proj"
    ):
        quantize_(_tiny_mixtral(), LordsConfig(bits=4, block_size=16, exclude=("lm_head", "mlp.gate")), progress=False)


def test_fused_moe_experts_excluded_by_name_stay_in_float_knowingly():
    model = _tiny_mixtral()
    quantize_(model, LordsConfig(bits=4, block_size=16, exclude=("lm_head", "mlp.gate", "experts")), progress=False)
    assert isinstance(model.model.layers[0].self_attn.q_proj, LoRDSLinear)
    assert model.model.layers[0].mlp.experts.gate_up_proj.dim() == 3


PEAK = """
import re, sys, torch, lords
from transformers import AutoModelForCausalLM
def kib(field):
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
AutoModelForCausalLM.from_pretrained(sys.argv[1])  # once first: lazy imports and allocator pools settle
open("/proc/self/clear_refs", "w").write("5")  # Linux: reset the peak resident set size (VmHWM) to now
before = kib("VmRSS")
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
print((kib("VmHWM") - before) * 1024)
"""


@pytest.mark.slow
def test_from_pretrained_peak_memory_stays_below_a_float_copy(tmp_path):
    """Codes written directly (no quantization to pay for): 6 layers of 1024 x 2816, 143 MB of float32 linear weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lords.checkpoint import install_layout, module_meta

    cfg = LlamaConfig(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=8,
        vocab_size=256,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n}
    float_bytes = sum(4 * m.weight.numel() for m in linears.values())
    layout = {
        n: module_meta(BlockLinear(m.in_features, m.out_features, 64, 4, torch.zeros(16))) for n, m in linears.items()
    }
    install_layout(model, layout)
    model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    for t in model.state_dict().values():
        t.copy_(
            torch.randint(0, 255, t.shape, generator=g) if t.dtype == torch.uint8 else torch.randn(t.shape, generator=g)
        )
    lords.hf.attach(model, BlockwiseConfig(bits=4, block_size=64))
    model.save_pretrained(tmp_path / "big")
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PEAK), str(tmp_path / "big")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    grown = int(done.stdout.split()[-1])
    assert grown < float_bytes / 2, (
        f"peak grew by {grown / 2**20:.0f} MiB; the float weights are {float_bytes / 2**20:.0f} MiB"
    )


@pytest.mark.parametrize("order", ["lords-first", "transformers-first"])
def test_import_lords_registers_the_quantizer_and_quantize_attaches_it_whichever_is_imported_first(order):
    imports = ["import lords", "from transformers import AutoModelForCausalLM, LlamaConfig"]
    code = "; ".join(
        [
            *(imports if order == "lords-first" else imports[::-1]),
            "from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING as M, "
            "AUTO_QUANTIZATION_CONFIG_MAPPING as C",
            "assert M['lords'].__name__ == 'LordsHfQuantizer' and C['lords'].__name__ == 'LordsQuantConfig'",
            "model = AutoModelForCausalLM.from_config(LlamaConfig(hidden_size=32, intermediate_size=64, "
            "num_hidden_layers=1, num_attention_heads=2, vocab_size=64))",
            "lords.quantize_(model, lords.BlockwiseConfig(block_size=16), progress=False)",
            "assert type(model.hf_quantizer).__name__ == 'LordsHfQuantizer'",
        ]
    )  # save_pretrained: a lords folder
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_the_embedded_model_round_trips_through_save_pretrained_with_tied_embeddings(tmp_path):
    from lords_pipelines.models import load_model

    model, tok = load_model("smollm2-135m")
    assert model.config.tie_word_embeddings
    quantize_(model, LordsConfig(bits=3, block_size=64), progress=False)
    model.save_pretrained(tmp_path / "q", max_shard_size="50MB")
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    assert len(shard_files(tmp_path / "q")) > 1
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))


def test_a_layer_that_cannot_be_quantized_on_load_stops_the_load_with_its_name(tmp_path):
    tiny_llama(seed=0).save_pretrained(tmp_path / "float")
    with pytest.raises(
        lords.errors.ShapeError, match=r"model.layers.0.self_attn.k_proj of shape \(64, 128\) cannot take rank 0"
    ):
        AutoModelForCausalLM.from_pretrained(tmp_path / "float", quantization_config=LordsQuantConfig(LordsConfig()))


def test_dequantize_gives_back_float_linears_with_the_same_logits(lords_dir, tokens):
    path, logits = lords_dir
    model = AutoModelForCausalLM.from_pretrained(path).dequantize(dtype=torch.float32)
    assert type(model.model.layers[0].mlp.up_proj) is torch.nn.Linear and not hasattr(
        model.config, "quantization_config"
    )
    out = _logits(model, tokens)
    assert float((out - logits).norm() / logits.norm()) < 1e-5  # the same W_hat, one matmul order apart


def test_a_failed_registration_warns_and_leaves_transformers_importable():
    code = textwrap.dedent("""
        import sys, warnings
        import lords
        sys.modules["lords.hf"] = None  # as if lords.hf could not import against this transformers
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from transformers import AutoModelForCausalLM, LlamaConfig

            AutoModelForCausalLM.from_config(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                         num_attention_heads=2, vocab_size=64))
        assert any("not registered" in str(w.message) for w in caught), [str(w.message) for w in caught]
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
