"""Registers ``quant_method: "lords"`` with transformers without importing transformers at ``import lords``.

``import lords`` stays torch-only and fast: if transformers' quantizer registry (``transformers.quantizers``) is
already imported, ``lords.hf`` registers now; otherwise a one-shot import hook registers it the moment transformers
imports that registry (``from_pretrained`` does, before it reads a ``quantization_config``).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings

REGISTRY = "transformers.quantizers"


def _register() -> None:
    """Import ``lords.hf`` (its import registers the config and the quantizer). Inside transformers' own import a
    failure (a transformers without the quantizer hooks lords.hf uses) must not break transformers: warn instead."""
    try:
        import lords.hf  # noqa: F401  (imports transformers: deferred until transformers itself is loading)
    except Exception as e:  # noqa: BLE001  (any failure here would surface as transformers failing to import)
        warnings.warn(
            f"lords: quant_method 'lords' not registered with this transformers ({type(e).__name__}: {e}); "
            "lords folders will not open with from_pretrained",
            RuntimeWarning,
            stacklevel=2,
        )


class _RegisteringLoader(importlib.abc.Loader):
    """Runs the real loader of ``transformers.quantizers``, then registers lords; delegates everything else."""

    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        _register()

    def __getattr__(self, name):
        return getattr(self.inner, name)


class _RegistryFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != REGISTRY:
            return None
        sys.meta_path.remove(self)  # one shot
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def install() -> None:
    """Register now if transformers' registry is loaded, else when it loads; nothing without transformers."""
    if REGISTRY in sys.modules:
        _register()
    elif importlib.util.find_spec("transformers") is not None and not any(
        isinstance(f, _RegistryFinder) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _RegistryFinder())
