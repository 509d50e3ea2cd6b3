"""The serving benchmark after PEFT: every method's served model (LoRDS before and after PEFT, each LoRA method
unmerged and merged) is timed in the same interleaved rounds, and the report names each variant once."""

import pytest

pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")

from benchmarks.serving import peft_serving  # noqa: E402

SPEC = """model: {model}
bits: 4
block_size: 32
methods: [lords_peft, qlora]
alpha_ratio: 1.0
loftq_iters: 1
precision: 32-true
data: {{max_length: 48}}
tasks: {{lords_roman: {{steps: 1, batch_size: 2}}}}
eval: {{texts: [kjv_genesis]}}
serving: {{task: lords_roman, train_steps: 1, batch_size: 2, lr: 1.0e-3, prompt_tokens: 8, new_tokens: 2,
  prefill_tokens: 32, rounds: 2, warmup: 1}}
"""


def test_every_variant_is_timed_in_every_round_and_reported_once(tmp_path):
    import json

    from lords_pipelines.models import tiny_llama
    from lords_pipelines.stages.common import bpe_tokenizer

    model_dir = tmp_path / "model"
    tiny_llama(seed=0).save_pretrained(model_dir)
    bpe_tokenizer(512).save_pretrained(model_dir)
    spec = tmp_path / "mini.yaml"
    spec.write_text(SPEC.format(model=model_dir))
    peft_serving.main([str(spec), "--out", str(tmp_path / "out")])
    rows = json.loads((tmp_path / "out" / "mini_serving.json").read_text())
    assert [r["variant"] for r in rows] == ["float", "lords_before", "lords_peft", "qlora", "qlora_merged"]
    assert all(
        len(r["times"]["decode_ms"]) == 2 and r["decode_ms_per_token"] > 0 and r["prefill_tokens_per_s"] > 0
        for r in rows
    )
    weights = {r["variant"]: r["weights_mib"] for r in rows}
    assert weights["lords_peft"] == weights["lords_before"] < weights["float"]
    assert "LoRDS after PEFT against before" in (tmp_path / "out" / "mini_serving.md").read_text()
