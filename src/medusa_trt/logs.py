"""Diagnostics through stdlib `logging`, under the ``medusa_trt`` logger, on stderr.

Modules log with ``logging.getLogger(__name__)``; what a user asked for (tables, progress, results)
stays Rich on stderr and ``--json`` stays alone on stdout. Quiet by default (warnings and errors);
``-v/--verbose`` or ``MEDUSA_TRT_LOG_LEVEL=debug|info|warning|error`` shows more.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

from medusa_trt.errors import InvalidInputError

LOG_LEVEL_ENV = "MEDUSA_TRT_LOG_LEVEL"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
ROOT = "medusa_trt"


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time, so redirections (and pytest's capture) see it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def level_from(verbose: bool, env: Mapping[str, str] | None = None) -> int:
    """``-v`` means debug; otherwise ``MEDUSA_TRT_LOG_LEVEL``; otherwise warnings only."""
    if verbose:
        return logging.DEBUG
    raw = (os.environ if env is None else env).get(LOG_LEVEL_ENV, "").strip()
    if not raw:
        return logging.WARNING
    if raw.lower() not in LEVELS:
        raise InvalidInputError(
            f"{LOG_LEVEL_ENV}={raw!r} is not a log level", hint=f"Use one of {', '.join(LEVELS)}, or unset it."
        )
    return LEVELS[raw.lower()]


def configure(level: int) -> None:
    """Send the package's records at ``level`` and above to stderr (idempotent: one handler, level reset)."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("medusa-trt %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
