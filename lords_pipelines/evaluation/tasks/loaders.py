"""Dataset loaders for the local lm-eval tasks (``custom_dataset: !function loaders.load_*``): the JSONL files
beside this module, made by ``python -m lords_pipelines.data.make``; no hub access and no dataset cache written."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent


def _load(name: str):
    import datasets

    rows = [json.loads(line) for line in (HERE / f"{name}.jsonl").read_text().splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def load_cloze(**_metadata):
    return _load("lords_cloze")


def load_unicode(**_metadata):
    return _load("lords_unicode")


def load_kjv_cloze(**_metadata):
    return _load("lords_kjv_cloze")


def load_kjv_next(**_metadata):
    return _load("lords_kjv_next")


def load_kjv_proverbs(**_metadata):
    return _load("lords_kjv_proverbs")


def load_kjv_prophets(**_metadata):
    return _load("lords_kjv_prophets")


def load_unicode_names(**_metadata):
    return _load("lords_unicode_names")


def load_prophets_word(**_metadata):
    return _load("lords_prophets_word")


def load_prophets_half(**_metadata):
    return _load("lords_prophets_half")
