"""The texts every run here uses, offline: an evaluation text shipped in the package and a calibration
text from Python's own ``pydoc_data`` (different domains, so calibration never sees evaluation text)."""
from __future__ import annotations

from importlib import resources

import torch

EVAL_CORPUS = "licenses"
CALIB_CORPUS = "pydoc_topics"


def eval_text() -> str:
    """GPL-3, Apache-2.0, MPL-2.0 and LGPL-2.1 as Debian ships them (verbatim copies are permitted)."""
    return resources.files("lords").joinpath("data/licenses.txt").read_text()


def calibration_text() -> str:
    """Python's pydoc topic pages (reference-manual prose and code), in sorted key order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def corpus_text(name: str) -> str:
    texts = {EVAL_CORPUS: eval_text, CALIB_CORPUS: calibration_text}
    if name not in texts:
        from .errors import ConfigError

        raise ConfigError(f"corpus={name!r} is not one of {tuple(texts)} (HF datasets load through pipelines)")
    return texts[name]()


def tokenize(tokenizer, text: str, max_tokens: int | None = None) -> torch.Tensor:
    """Token ids ``(1, T)`` of ``text``, cut to ``max_tokens``."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    return ids[:, :max_tokens] if max_tokens else ids
