"""One family of errors, so callers can catch everything the library refuses with one ``except``."""


class LordsError(Exception):
    """Base class of every error the library raises on purpose."""


class ConfigError(LordsError, ValueError):
    """A configuration field has a value the library cannot use; the message names the field."""


class ShapeError(LordsError, ValueError):
    """A tensor or layer has a shape the operation cannot handle; the message names the shapes."""


class NumericsError(LordsError, ValueError):
    """NaN or Inf found where finite values are required; the message names the tensor or module."""


class UnsupportedModuleError(LordsError, TypeError):
    """A module cannot be quantized (not a linear layer, or a model with no linear layers)."""


class CheckpointError(LordsError, OSError):
    """A checkpoint is missing, truncated, tampered with, or does not match the model."""
