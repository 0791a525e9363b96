"""One error hierarchy for the whole tool.

Every error carries a one-line message, an optional hint and the exit code the CLI returns.
The CLI prints ``error: <message>`` and ``hint: <hint>`` on stderr; tracebacks only with --debug.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_MISSING = 3
EXIT_INCOMPATIBLE = 4
EXIT_INTERRUPTED = 130


class MedusaTrtError(Exception):
    """Base class: a failure the user can act on (exit 1)."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InvalidInputError(MedusaTrtError):
    """Bad arguments, files or requests (exit 2)."""

    exit_code = EXIT_USAGE


class ProfileError(InvalidInputError):
    """A hardware profile that cannot be found or parsed (exit 2)."""


class CheckpointError(InvalidInputError):
    """A model, heads or TRT-LLM checkpoint that is missing, truncated or inconsistent (exit 2)."""


class TreeError(InvalidInputError):
    """A Medusa tree that is malformed or does not fit the heads / max_draft_len (exit 2)."""


class MissingDependencyError(MedusaTrtError):
    """A GPU, an optional extra or an external tool is missing (exit 3)."""

    exit_code = EXIT_MISSING


class IncompatibleError(MedusaTrtError):
    """A profile that does not fit the model or the hardware (exit 4)."""

    exit_code = EXIT_INCOMPATIBLE


class ToolFailedError(MedusaTrtError):
    """An external tool (trtllm-build, trtllm-serve) ran and failed (exit 1)."""


class ServerError(MedusaTrtError):
    """A server that cannot be reached or answers with errors (exit 1)."""


class EngineFailedError(MedusaTrtError):
    """A tensor-parallel rank died, or a step outlived its timeout (exit 1): the engine cannot go on."""
