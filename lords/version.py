"""The library's version, in a module of its own: the modules that record it in files (``lords.hf``, ``lords.adapter``)
import it from here, not from the package ``__init__`` that imports them."""

__version__ = "0.1.0"
