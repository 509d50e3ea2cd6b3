"""The LoRA baselines in their deployable form: the adapter merged into the 4-bit base and re-quantized to the base's
format, scored as the unmerged model is.

``peft_methods.merged`` is peft's ``merge_and_unload`` on the bitsandbytes NF4 base: per layer it dequantizes the
NF4 weight (``dequantize_bnb_weight``), adds ``scaling·B·A`` and builds a new ``Params4bit`` from the sum, which
bitsandbytes quantizes to NF4 at the base's block size (the same ``quantize_4bit``) when it moves to the layer's
device. bitsandbytes 0.50.2 does all of it on the CPU as well (its CPU backend quantizes and dequantizes NF4), so
the CPU path is the GPU path: the merged model is what a QLoRA user ships. A base peft cannot merge into (the
project's ``BlockLinear`` at 3 or 2 bits) gives no merged scores.
"""

from __future__ import annotations

from torch import nn

from lords_pipelines.evaluation.scores import corpus_perplexity
from lords_pipelines.peft_methods import merged
from lords_pipelines.tables.peft_tasks import TaskData, held_out_scores, validation_score


def merged_scores(
    model: nn.Module, tok, task: TaskData, texts, tokens: int, batch_size: int = 32, text_ids=None
) -> tuple[nn.Module | None, dict]:
    """``(merged model, {"merged": {val_score, <task>/acc …, ppl: {text: perplexity}}})`` of a trained LoRA model
    (consumed: merging re-quantizes its base in place); ``(None, {"merged": None})`` where peft cannot merge.
    ``text_ids``: ``text → (1, T)`` token ids (the runner's cache), else each text is tokenized here."""
    model = merged(model)
    if model is None:
        return None, {"merged": None}
    model.eval()
    scores = {"val_score": validation_score(model, tok, task, batch_size)}
    scores.update(held_out_scores(model, tok, task, batch_size))
    scores["ppl"] = {
        text: corpus_perplexity(model, tok, text, tokens, ids=None if text_ids is None else text_ids(text))[0]
        for text in texts
    }
    return model, {"merged": scores}
