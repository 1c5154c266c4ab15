"""Every exception type `steer` raises for a problem a user can fix, in one place (re-exported where they are used).

All are ``ValueError`` / ``KeyError`` / ``OSError`` subclasses, so existing ``except ValueError`` handlers keep working.
"""

from __future__ import annotations


class LayerError(KeyError):
    """An unknown layer name or pattern; the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class SteeringFileError(ValueError):
    """A direction file is missing, truncated, edited or not a steering vector."""


class DetectorFileError(SteeringFileError):
    """A detector file is missing, truncated, edited or not a detector."""


class ModelMismatchError(ValueError):
    """A steering vector does not fit the UNet it is applied to."""


class SchemaError(ValueError):
    """A header field has the wrong type or value; callers prefix the file name and re-raise their own error."""


class UnusedOptionError(ValueError):
    """An option given to a call that ignores it; ``option`` names it (the CLI names its own flag from it)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


class NonFiniteOutputError(ValueError):
    """A generation produced NaN or infinite values; the image is refused rather than written black."""


class UnsafePathError(OSError):
    """A path under the output folder is a symlink (or not what it should be): nothing is written through it."""


class OutputBusyError(OSError):
    """Another ``steer batch`` holds the output folder's lock."""


class UnsupportedPipelineError(ValueError):
    """steer has no steered version of this diffusers pipeline class."""
