"""The LoRA baselines merged as they ship: peft's merge_and_unload on the bitsandbytes NF4 base re-quantizes
base + B·A to NF4 (on the CPU too, bitsandbytes 0.50.2), and the merged model is scored on the task and both
perplexities as the unmerged one is."""

import pytest
import torch

pytest.importorskip("peft")
bnb = pytest.importorskip("bitsandbytes")

from omegaconf import OmegaConf  # noqa: E402

from lords_pipelines.models import tiny_llama  # noqa: E402
from lords_pipelines.peft_methods import prepare  # noqa: E402
from lords_pipelines.stages.common import bpe_tokenizer  # noqa: E402
from lords_pipelines.tables.peft_merged import merged_scores  # noqa: E402
from lords_pipelines.tables.peft_tasks import load_task  # noqa: E402
from lords_pipelines.tables.peft_train import train  # noqa: E402

SPEC = OmegaConf.create(
    {"max_length": 48, "window": 32, "train_tokens": 96, "val_tokens": 64, "val_limit": 4, "test_limit": 4}
)


@pytest.mark.parametrize("method", ["qlora", "loftq", "qpissa"])
def test_a_merged_lora_is_nf4_again_and_scores_as_the_unmerged_model_is(method):
    model, tok = tiny_llama(seed=0), bpe_tokenizer(512)
    task = load_task("lords_roman", tok, SPEC)
    p = prepare(model, method, block_size=32)
    train(p.model, task.train[:8], tok, steps=2, batch_size=4, lr=1e-2, seed=0)
    base = p.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    lora_A = p.model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight.clone()
    lora_B = p.model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight.clone()
    scaling = p.model.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"]
    expected = bnb.functional.dequantize_4bit(base.weight.data, base.weight.quant_state) + scaling * lora_B @ lora_A
    merged, fields = merged_scores(p.model, tok, task, ["licenses", "kjv_genesis"], tokens=64, batch_size=4)
    q = merged.model.layers[0].self_attn.q_proj
    assert isinstance(q, bnb.nn.Linear4bit) and q.weight.quant_state.blocksize == 32  # the base's format, again
    assert not any("lora" in n for n, _ in merged.named_parameters())
    # what bitsandbytes' own NF4 quantizer makes of the float merge, code for code
    codes, state = bnb.functional.quantize_4bit(expected.float(), blocksize=32, quant_type="nf4")
    assert torch.equal(q.weight.data.view(-1), codes.view(-1))
    scores = fields["merged"]
    assert scores["lords_roman/items"] == 4 and 0 <= scores["lords_roman/acc"] <= 1 and 0 <= scores["val_score"] <= 1
    assert set(scores["ppl"]) == {"licenses", "kjv_genesis"} and all(v > 1 for v in scores["ppl"].values())


def test_a_lords_model_has_nothing_to_merge():
    model, tok = tiny_llama(seed=0), bpe_tokenizer(512)
    p = prepare(model, "lords_peft", block_size=32)
    assert merged_scores(p.model, tok, None, [], tokens=64) == (None, {"merged": None})
