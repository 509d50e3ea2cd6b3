"""Zero-shot multiple choice on the shipped tasks, batched, with lm-eval's exact semantics and without its stack.

lm-eval (``evaluation.lm_eval_accuracy``) is the reference and the way users run the tasks; the GPU machine lacks
its dependencies, and the tables score thousands of items per row. This scorer encodes each pair as lm-eval's HF
model does (context + ``target_delimiter`` + choice; trailing spaces of the context move to the continuation;
the continuation's tokens are those of the whole string past the context's; the tokenizer's own special tokens,
so BOS where it adds one), sums the continuation's log-probabilities, and takes ``acc`` = argmax of the sum,
``acc_norm`` = argmax of the sum over the choice's length in characters. A test holds it equal to lm-eval.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lords.errors import ConfigError
from lords.linear import cached_weights

TASKS_DIR = Path(__file__).parent / "tasks"
ZERO_SHOT = ("lords_kjv_cloze", "lords_kjv_next", "lords_kjv_proverbs")


@dataclass(frozen=True)
class Item:
    context: str
    choices: tuple[str, ...]
    label: int


def load_items(task: str, limit: int | None = None) -> list[Item]:
    """The items of a shipped task (``lords_pipelines/evaluation/tasks/<task>.jsonl``), the first ``limit`` of them."""
    path = TASKS_DIR / f"{task}.jsonl"
    if not path.is_file():
        shipped = sorted(p.stem for p in TASKS_DIR.glob("*.jsonl"))
        raise ConfigError(f"task {task!r} is not shipped (shipped: {shipped}); standard tasks run through lm-eval")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Item(r["context"], tuple(r["choices"]), int(r["label"])) for r in rows[:limit]]


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of context and continuation as lm-eval's causal HF model cuts them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx) :]


@torch.no_grad()
def loglikelihoods(model: nn.Module, pairs: list[tuple[list[int], list[int]]], batch_size: int = 32) -> list[float]:
    """Sum of ``log p(continuation | context)`` per pair; longest first in right-padded batches."""
    device = next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
    out = [0.0] * len(pairs)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        seqs = [(pairs[i][0] + pairs[i][1])[:-1] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.tensor(s)
            mask[row, : len(s)] = 1
        logp = F.log_softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), -1)
        for row, i in enumerate(idx):
            ctx, cont = pairs[i]
            n = len(ctx) + len(cont) - 1
            positions = torch.arange(n - len(cont), n, device=device)
            out[i] = float(logp[row, positions, torch.tensor(cont, device=device)].sum())
    return out


def interval95(acc: float, n: int) -> float:
    """Half-width of the normal-approximation 95% interval of an accuracy over ``n`` items."""
    return 1.96 * math.sqrt(max(acc * (1 - acc), 0.0) / max(n, 1))


def choice_loglikelihoods(
    model: nn.Module, tokenizer, items: list[Item], batch_size: int = 32, delimiter: str = " "
) -> list[list[float]]:
    """``log p(delimiter + choice | context)`` for every choice of every item."""
    pairs = [encode_pair(tokenizer, it.context, delimiter + c) for it in items for c in it.choices]
    model.eval()
    with cached_weights(model):
        flat = loglikelihoods(model, pairs, batch_size)
    out, k = [], 0
    for it in items:
        out.append(flat[k : k + len(it.choices)])
        k += len(it.choices)
    return out


def score_task(
    model: nn.Module, tokenizer, task: str, limit: int | None = None, batch_size: int = 32
) -> dict[str, float]:
    """``{task/acc, task/acc_norm, task/acc_ci95, task/items, task/correct}`` of ``model`` on a shipped task;
    ``correct`` is one character per item, ``"1"`` where ``acc`` counts it (what paired tests between two models on
    the same items read)."""
    items = load_items(task, limit)
    right = right_norm = 0
    correct = []
    for it, lls in zip(items, choice_loglikelihoods(model, tokenizer, items, batch_size)):
        ll = torch.tensor(lls)
        lengths = torch.tensor([float(len(c)) for c in it.choices])
        correct.append("1" if int(ll.argmax()) == it.label else "0")
        right_norm += int(int((ll / lengths).argmax()) == it.label)
    right = correct.count("1")
    n = len(items)
    acc = right / n
    return {
        f"{task}/acc": acc,
        f"{task}/acc_norm": right_norm / n,
        f"{task}/acc_ci95": interval95(acc, n),
        f"{task}/items": n,
        f"{task}/correct": "".join(correct),
    }


def zero_shot(
    model: nn.Module, tokenizer, tasks=ZERO_SHOT, limit: int | None = None, batch_size: int = 32
) -> dict[str, float]:
    """Every task's scores plus ``zero_shot_mean`` (mean ``acc`` over tasks) and its 95% half-width
    (items pooled: the tasks have equal sizes)."""
    out: dict[str, float] = {}
    for task in tasks:
        out.update(score_task(model, tokenizer, task, limit, batch_size))
    if tasks:
        items = sum(out[f"{t}/items"] for t in tasks)
        mean = sum(out[f"{t}/acc"] for t in tasks) / len(tasks)
        out.update(zero_shot_mean=mean, zero_shot_ci95=interval95(mean, items))
    return out
