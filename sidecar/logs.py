"""structlog set-up: one JSON object per line on stderr (audit events included)."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, TextIO, cast

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


class _SafeStream:
    """stderr that never raises: a full disk or a closed pipe behind the log must not stop
    the process that keeps certificates fresh (the metrics still tell)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            return 0

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()


def configure(level: str = "info", component: str = "pki-auth-manager") -> Any:
    """Configure structlog for JSON lines and return a logger bound to ``component``."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _SafeStream(sys.stderr))),
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger().bind(component=component)
