"""The DataModule: calibration text as packed token windows, or prompt/answer pairs with loss on answers only.

Sources (``data`` group): ``pydoc_topics`` / ``licenses`` (offline texts of ``lords_pipelines.data.texts``), a local ``.txt``
file, a local JSONL of ``{prompt, answer}`` pairs, or ``hf:<dataset>[:<config>]`` through ``datasets`` when
online. Batches are dicts ``input_ids (b, t)``, ``attention_mask (b, t)``, ``labels (b, t)`` (−100: no loss).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from lords.errors import ConfigError
from lords_pipelines.data.texts import CORPORA, corpus_text, tokenize
from lords_pipelines.stages.settings import DataSettings

IGNORE = -100


def _hf(source: str, split: str):
    import datasets

    parts = source.removeprefix("hf:").split(":")
    return datasets.load_dataset(parts[0], parts[1] if len(parts) > 1 else None, split=split)


def source_text(source: str, text_field: str = "text", split: str = "train") -> str:
    """The text of a calibration/evaluation source (see the module docstring)."""
    if source.startswith("hf:"):
        return "\n\n".join(t for t in _hf(source, split)[text_field] if t)
    if source in CORPORA:
        return corpus_text(source)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"text {source!r}: no such corpus ({', '.join(CORPORA)}) or file")
    return path.read_text()


def calibration_ids(data: DataSettings, tokenizer, tokens: int, offset: int = 0) -> torch.Tensor:
    """``(1, tokens)`` token ids of the calibration source (after ``offset`` tokens)."""
    text = source_text(data.calib_source, data.text_field, data.split)
    ids = tokenize(tokenizer, text, offset + tokens)[:, offset:]
    if ids.shape[1] < 2:
        raise ConfigError(f"data.calib_source={data.calib_source!r} gives {ids.shape[1]} tokens after {offset}")
    return ids


def load_pairs(data: DataSettings) -> list[tuple[str, str]]:
    """``[(prompt, answer)]`` from a JSONL file or an HF dataset."""
    src = data.finetune_source
    if src.startswith("hf:"):
        rows = _hf(src, data.split)
    else:
        path = Path(src)
        if not path.is_file():
            raise ConfigError(f"data.finetune_source={src!r}: no such file")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    try:
        return [(r[data.prompt_field], r[data.answer_field]) for r in rows]
    except KeyError as e:
        raise ConfigError(f"data.prompt_field/answer_field: {e} not in {src!r}") from None


def encode_pair(tokenizer, prompt: str, answer: str, max_length: int) -> dict[str, torch.Tensor]:
    """Prompt then answer then EOS; labels are −100 on the prompt, so the loss covers the answer only."""
    p = tokenizer(prompt, add_special_tokens=False).input_ids
    a = tokenizer(answer, add_special_tokens=False).input_ids
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = (p + a + eos)[:max_length]
    labels = ([IGNORE] * len(p) + a + eos)[:max_length]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}


class _Items(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def pad_collate(pad_id: int):
    def collate(items):
        t = max(len(x["input_ids"]) for x in items)
        out = {
            "input_ids": torch.full((len(items), t), pad_id),
            "labels": torch.full((len(items), t), IGNORE),
            "attention_mask": torch.zeros(len(items), t, dtype=torch.long),
        }
        for i, x in enumerate(items):
            n = len(x["input_ids"])
            out["input_ids"][i, :n] = x["input_ids"]
            out["labels"][i, :n] = x["labels"]
            out["attention_mask"][i, :n] = 1
        return out

    return collate


class LordsDataModule(L.LightningDataModule):
    """``kind='calib'``: packed windows of ``data.window`` tokens (train: the calibration tokens; val: the
    windows right after them). ``kind='finetune'``: prompt/answer pairs (val: the last ``data.val_items``)."""

    def __init__(self, data: DataSettings, tokenizer, kind: str = "calib"):
        super().__init__()
        if kind not in ("calib", "finetune"):
            raise ConfigError(f"kind={kind!r} is not one of ('calib', 'finetune')")
        self.data, self.tokenizer, self.kind = data, tokenizer, kind
        self.train_set = self.val_set = self.calib_ids = None

    def _windows(self, ids: torch.Tensor) -> list[dict]:
        w = self.data.window
        n = max(ids.shape[1] // w, 1)
        chunks = ids[0, : n * w].view(n, -1) if ids.shape[1] >= w else ids
        return [{"input_ids": c, "labels": c.clone()} for c in chunks]

    def setup(self, stage: str | None = None):
        if self.train_set is not None:
            return
        if self.kind == "calib":
            ids = self.calib_ids = calibration_ids(self.data, self.tokenizer, self.data.train_tokens)
            self.train_set = _Items(self._windows(ids))
            try:
                val = tokenize(
                    self.tokenizer,
                    source_text(self.data.calib_source, self.data.text_field, self.data.split),
                    ids.shape[1] + self.data.window,
                )
                self.val_set = _Items(self._windows(val[:, ids.shape[1] :]) if val.shape[1] > ids.shape[1] + 1 else [])
            except ConfigError:
                self.val_set = _Items([])
        else:
            pairs = load_pairs(self.data)
            if len(pairs) <= self.data.val_items:
                raise ConfigError(f"data.val_items={self.data.val_items} leaves no training pairs of {len(pairs)}")
            enc = [encode_pair(self.tokenizer, p, a, self.data.max_length) for p, a in pairs]
            cut = len(enc) - self.data.val_items
            self.train_set, self.val_set = _Items(enc[:cut]), _Items(enc[cut:])

    def calibration_ids(self) -> torch.Tensor:
        """The calibration tokens ``(1, T)`` the windows were cut from (``kind='calib'``, after ``setup``)."""
        if self.calib_ids is None:
            raise ConfigError("calibration_ids() needs kind='calib' and setup() first")
        return self.calib_ids

    def _loader(self, ds, shuffle):
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        return DataLoader(
            ds,
            batch_size=self.data.batch_size,
            shuffle=shuffle,
            num_workers=self.data.num_workers,
            collate_fn=pad_collate(pad),
            generator=torch.Generator().manual_seed(0) if shuffle else None,
        )

    def train_dataloader(self):
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val_set, shuffle=False)
