"""What the PEFT table trains on and how each task is scored: training batches, the validation score the learning
rate is chosen on, and the held-out test score.

- ``lords_roman`` (``kind: exact``): prompt/answer pairs, loss on the answer; score = exact match on held-out
  numbers (``evaluation.answer_metrics``: every answer token and the EOS after it is the greedy next token).
- ``lords_kjv_prophets`` (``kind: choice``): prompt/answer pairs (verse → next verse), loss on the answer; score =
  4-way accuracy with lm-eval's semantics (``multiple_choice``; the test split is the lm-eval task itself).
- ``lords_unicode_names`` (``kind: choice``): ``Unicode name of "ж":`` → the name, loss on the answer; scored as
  ``lords_kjv_prophets`` (4-way, lm-eval's semantics; test split = the lm-eval task).
- ``lords_prophets_word``, ``lords_prophets_half`` (``kind: choice``): a verse of Isaiah or Jeremiah without its last
  word → the word; the first half of a verse → its second half; scored as ``lords_kjv_prophets``.
- ``kjv`` (``kind: text``, domain adaptation): packed windows of ``kjv_train``; validation = perplexity on the last
  ``val_tokens`` tokens of ``kjv_train`` (never trained on); test = perplexity on ``kjv_genesis`` (every run also
  reports it, and ``licenses``, as a forgetting check).
Data files: ``lords_pipelines/data/peft/<task>_<split>.jsonl`` (``python -m lords_pipelines.data.make``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from lords.errors import ConfigError
from lords_pipelines.data.texts import corpus_text, tokenize
from lords_pipelines.evaluation.multiple_choice import Item, choice_loglikelihoods, score_task
from lords_pipelines.evaluation.scores import answer_metrics, corpus_perplexity
from lords_pipelines.stages.datamodule import encode_pair, pad_collate

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "peft"
KINDS = {
    "lords_roman": "exact",
    "lords_kjv_prophets": "choice",
    "lords_unicode_names": "choice",
    "lords_prophets_word": "choice",
    "lords_prophets_half": "choice",
    "kjv": "text",
}


@dataclass(frozen=True)
class TaskData:
    """A task's encoded training items and what its validation and test scores read."""

    name: str
    kind: str
    train: list
    """Encoded items ``{input_ids, labels}`` (labels −100 where no loss is taken)."""
    val: list
    """Encoded pairs (exact), ``Item``s (choice) or ``(1, T)`` token ids (text)."""
    test: list | None
    """Encoded pairs (exact); None for choice (the shipped lm-eval task) and text (perplexity on ``kjv_genesis``)."""
    test_limit: int | None = None
    """Score only the first test items (CPU smoke runs; None in the tables)."""


def _rows(name: str) -> list[dict]:
    path = DATA_DIR / f"{name}.jsonl"
    if not path.is_file():
        raise ConfigError(f"{path} missing: python -m lords_pipelines.data.make")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _pairs(tok, rows: list[dict], max_length: int) -> list[dict]:
    """Encoded pairs; a pair whose answer ``max_length`` cuts off entirely is dropped (it would carry no loss)."""
    pairs = [encode_pair(tok, r["prompt"], r["answer"], max_length) for r in rows]
    return [p for p in pairs if (p["labels"] != -100).any()]


def load_task(name: str, tok, spec, cache: dict | None = None) -> TaskData:
    """The task ``name`` for tokenizer ``tok``; ``spec``: the table's ``data`` section (``max_length``, ``window``,
    ``train_tokens``, ``val_tokens``, ``val_limit``, ``test_limit``)."""
    if name not in KINDS:
        raise ConfigError(f"task {name!r} is not one of {tuple(KINDS)}")
    kind = KINDS[name]
    limit, test_limit = spec.get("val_limit"), spec.get("test_limit")
    if kind == "exact":
        return TaskData(
            name,
            kind,
            _pairs(tok, _rows(f"{name}_train"), spec.max_length),
            _pairs(tok, _rows(f"{name}_val"), spec.max_length)[:limit],
            _pairs(tok, _rows(f"{name}_test")[:test_limit], spec.max_length),
            test_limit,
        )
    if kind == "choice":
        val = [Item(r["context"], tuple(r["choices"]), int(r["label"])) for r in _rows(f"{name}_val")][:limit]
        return TaskData(name, kind, _pairs(tok, _rows(f"{name}_train"), spec.max_length), val, None, test_limit)
    cache = {} if cache is None else cache
    if "kjv_train" not in cache:
        cache["kjv_train"] = tokenize(tok, corpus_text("kjv_train"))
    ids = cache["kjv_train"]
    if ids.shape[1] < spec.train_tokens + spec.val_tokens:
        raise ConfigError(f"data.train_tokens + val_tokens exceed the {ids.shape[1]} tokens of kjv_train")
    w = spec.window
    n = spec.train_tokens // w
    windows = ids[0, : n * w].view(n, w)
    return TaskData(
        name, kind, [{"input_ids": x, "labels": x.clone()} for x in windows], [ids[:, -spec.val_tokens :]], None
    )


def loader(items: list, tok, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    return DataLoader(
        items,
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=pad_collate(pad),
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
    )


def choice_accuracy(model, tok, items: list[Item], batch_size: int = 32) -> float:
    """Share of items whose right choice has the highest summed log-likelihood (lm-eval's ``acc``)."""
    lls = choice_loglikelihoods(model, tok, items, batch_size)
    return sum(int(torch.tensor(ll).argmax()) == it.label for ll, it in zip(lls, items)) / len(items)


def validation_score(model, tok, task: TaskData, batch_size: int = 32) -> float:
    """What the learning rate is chosen on, higher is better: exact match, accuracy, or minus perplexity."""
    model.eval()
    if task.kind == "exact":
        return answer_metrics(model, loader(task.val, tok, batch_size, False))["answer_exact"]
    if task.kind == "choice":
        return choice_accuracy(model, tok, task.val, batch_size)
    return -corpus_perplexity(model, tok, "kjv_train", task.val[0].shape[1], ids=task.val[0])[0]


def held_out_scores(model, tok, task: TaskData, batch_size: int = 32) -> dict:
    """``<task>/acc`` (and its item count) on the held-out test split; the text task's test is the perplexity on
    ``kjv_genesis`` that every row carries."""
    model.eval()
    if task.kind == "exact":
        m = answer_metrics(model, loader(task.test, tok, batch_size, False))
        return {
            f"{task.name}/acc": m["answer_exact"],
            f"{task.name}/items": m["answer_items"],
            f"{task.name}/answer_nll": m["answer_nll"],
        }
    if task.kind == "choice":
        s = score_task(model, tok, task.name, limit=task.test_limit, batch_size=batch_size)
        return {k: s[k] for k in (f"{task.name}/acc", f"{task.name}/acc_norm", f"{task.name}/items")}
    return {}
