import os

import pytest
import torch

# Without a GPU, Triton kernels run in its interpreter; the flag must be set before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tests are small: two threads match CI's two cores and keep timings stable.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def tiny_model():
    """A 2-layer random Llama (hidden 128), seeded: every linear is 128- or 256-wide."""
    from lords_pipelines.models import tiny_llama

    return tiny_llama(seed=0)


@pytest.fixture
def tokens():
    """Deterministic token ids (1, 96) inside the tiny model's 512-token vocabulary."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 512, (1, 96), generator=g)


@pytest.fixture
def model_dir(tmp_path):
    """A tiny random Llama saved as a model folder with its offline tokenizer (a table's ``spec.model``)."""
    from lords_pipelines.models import tiny_llama
    from lords_pipelines.stages.common import bpe_tokenizer

    path = tmp_path / "model"
    tiny_llama(seed=0).save_pretrained(path)
    bpe_tokenizer(512).save_pretrained(path)
    return path


@pytest.fixture
def run_table(monkeypatch):
    """``run_table(*overrides)``: ``python -m lords_pipelines.stages.table --multirun *overrides`` in this process
    (its rows' loggers as CSV unless a ``logger=`` is given; ``multirun=False`` for a plain run)."""
    import sys

    def run(*overrides: str, multirun: bool = True) -> None:
        from lords_pipelines.stages import table

        logger = [] if any(o.startswith("logger=") for o in overrides) else ["logger=csv"]
        monkeypatch.setattr(sys, "argv", ["table", *(["--multirun"] if multirun else []), *overrides, *logger])
        table.main()

    return run
