"""Every error the library raises: one hierarchy under :class:`InferenceError`.

Each subclass also inherits the builtin exception it stands in for, so code
that already catches ``LookupError`` or ``TimeoutError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "BackendNotFoundError",
    "BackendUnavailableError",
    "Cancelled",
    "ConstraintError",
    "DeadlineExceeded",
    "GenerationError",
    "InferenceError",
    "ModelClosedError",
    "ModelLoadError",
    "NoBackendError",
    "UnsupportedOptionError",
]


class InferenceError(Exception):
    """Base class of every error raised by ``inference`` and its backends."""


class BackendNotFoundError(InferenceError, LookupError):
    """No backend is registered under the requested name."""

    def __str__(self) -> str:  # LookupError would quote the message like a key
        return str(self.args[0]) if self.args else ""


class BackendUnavailableError(InferenceError, RuntimeError):
    """The requested backend is installed but cannot run here.

    ``reason`` holds the backend's one-line explanation.
    """

    def __init__(self, message: str, *, backend: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.backend = backend
        self.reason = reason


class NoBackendError(InferenceError, RuntimeError):
    """No installed backend is available for the model."""


class ModelLoadError(InferenceError, OSError):
    """A model could not be loaded: missing path, wrong format, corrupt file."""

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:  # OSError would format errno-style tuples
        return str(self.args[0]) if self.args else ""


class GenerationError(InferenceError, RuntimeError):
    """A generation call failed."""


class UnsupportedOptionError(GenerationError, ValueError):
    """The model cannot honour an option of the call (a structured-output
    constraint, tools, log-probabilities...), so the call was refused before
    anything was sent or generated. ``option`` names the option and
    ``backend`` the backend or server kind."""

    def __init__(self, message: str, *, option: str = "", backend: str = "") -> None:
        super().__init__(message)
        self.option = option
        self.backend = backend


class ConstraintError(GenerationError, ValueError):
    """A structured-output constraint is not valid: a bad JSON schema, regular
    expression or grammar. The message is the constraint engine's own."""


class ModelClosedError(GenerationError):
    """The model was used after :meth:`close`."""


class Cancelled(InferenceError):
    """The call was cancelled; streams end quietly with this in ``err``."""


class DeadlineExceeded(Cancelled, TimeoutError):
    """The call ran past its ``timeout``."""
