"""lords pipelines: Hydra stages, the paper's tables, evaluation and the ``lords`` command around the library."""

from pathlib import Path

CONF = Path(__file__).resolve().parent.parent / "conf"
"""The Hydra configuration folder (``conf/`` at the repository root, beside the packages)."""
