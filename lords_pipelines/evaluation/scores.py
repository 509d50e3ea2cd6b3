"""Evaluation: perplexity (the library's protocol) and zero-shot accuracy through lm-eval.

Local tasks live in ``lords_pipelines/evaluation/tasks`` (``lords_cloze``, ``lords_unicode``, group ``lords_local``) and run
offline; standard names (arc_easy, arc_challenge, hellaswag, piqa, winogrande, boolq, openbookqa) need the hub.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lords.linear import cached_weights
from lords_pipelines.data.texts import bos_id, tokenize
from lords_pipelines.evaluation.perplexity import perplexity
from lords_pipelines.stages.settings import EvalSettings

LOCAL_TASKS = Path(__file__).parent / "tasks"
STANDARD_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "boolq", "openbookqa")


def corpus_ids(tokenizer, corpus: str, tokens: int):
    """``(1, tokens)`` token ids of the start of an evaluation text (a shipped corpus, a file or ``hf:...``)."""
    from lords_pipelines.stages.datamodule import source_text

    text = source_text(corpus, split="test") if corpus.startswith("hf:") else source_text(corpus)
    return tokenize(tokenizer, text, tokens)


def corpus_perplexity(
    model: nn.Module, tokenizer, corpus: str, tokens: int, window: int = 2048, ids=None
) -> tuple[float, int]:
    """``(perplexity, tokens scored)`` on the first ``tokens`` tokens of ``corpus`` (or on ``ids`` already cut
    from it), BOS-led windows where the tokenizer adds BOS (``lords_pipelines.evaluation.perplexity``)."""
    ids = corpus_ids(tokenizer, corpus, tokens) if ids is None else ids
    ctx = getattr(getattr(model, "config", None), "max_position_embeddings", window)
    with cached_weights(model):
        return perplexity(model, ids, min(window, ctx), progress=f"perplexity on {corpus}", bos=bos_id(tokenizer))


def eval_perplexity(model: nn.Module, tokenizer, s: EvalSettings) -> dict[str, Any]:
    if s.perplexity_tokens == 0:
        return {}
    out: dict[str, Any] = {}
    for corpus in (s.corpus, *s.extra_corpora):
        ppl, n = corpus_perplexity(model, tokenizer, corpus, s.perplexity_tokens, s.window)
        out[f"ppl/{corpus}"] = ppl
        if corpus == s.corpus:
            out.update(ppl=ppl, ppl_tokens=n, ppl_corpus=corpus)
    return out


def lm_eval_accuracy(
    model: nn.Module, tokenizer, tasks, limit: int | None = None, batch_size: int = 1, device: str | None = None
) -> dict[str, float]:
    """``{task/acc: ..., task/acc_norm: ...}`` from lm-eval on ``model`` (an ``HFLM`` around the object)."""
    tasks = list(tasks)
    if not tasks:  # lm-eval is needed only when tasks are asked for
        return {}
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    # Its warnings here are all about what we do on purpose (an initialised model object, no task metadata).
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    local = {p.stem for p in LOCAL_TASKS.glob("*.yaml")}
    only_local = all(t in local for t in tasks)
    manager = TaskManager(include_path=str(LOCAL_TASKS), include_defaults=not only_local)
    device = device or str(next(model.parameters()).device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    with cached_weights(model):
        out = simple_evaluate(
            model=lm, tasks=tasks, task_manager=manager, limit=limit, bootstrap_iters=0, log_samples=False
        )
    metrics = {}
    for task, res in out["results"].items():
        for key, value in res.items():
            metric, _, filt = key.partition(",")
            if metric in ("acc", "acc_norm", "exact_match") and isinstance(value, (int, float)):
                metrics[f"{task}/{metric}"] = float(value)
    return metrics


def evaluate(model: nn.Module, tokenizer, s: EvalSettings) -> dict[str, Any]:
    model.eval()
    metrics = eval_perplexity(model, tokenizer, s)
    metrics.update(lm_eval_accuracy(model, tokenizer, s.tasks, s.task_limit, s.batch_size))
    return metrics


@torch.no_grad()
def answer_metrics(model: nn.Module, loader) -> dict[str, float]:
    """Mean answer-token NLL and exact-match rate (greedy next token on every answer position) over a loader."""
    model.eval()
    nll, tokens, exact, items = 0.0, 0, 0, 0
    device = next(model.parameters()).device
    with cached_weights(model):
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            logits, labels = logits[:, :-1], batch["labels"][:, 1:]
            mask = labels != -100
            nll += float(torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="sum"))
            tokens += int(mask.sum())
            right = (logits.argmax(-1) == labels) | ~mask
            exact += int(right.all(dim=1).sum())
            items += labels.shape[0]
    return {"answer_nll": nll / max(tokens, 1), "answer_exact": exact / max(items, 1), "answer_items": items}
