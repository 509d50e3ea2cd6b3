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
