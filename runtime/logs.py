"""structlog configuration: key-value lines for people, JSON for machines."""

from __future__ import annotations

import logging
import os
import sys

import structlog
from structlog.typing import EventDict, WrappedLogger

from .urls import redact_url


def redact_credentials(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    """Never log a secret: any string field quoting a URL with credentials is redacted
    (``url=nats://alice:***@host``), whoever logged it (a runtime's ``runtime.started``)."""
    for key, value in event.items():
        if isinstance(value, str) and "@" in value and "://" in value:
            event[key] = redact_url(value)
    return event


def configure(level: str | None = None, *, json: bool | None = None) -> None:
    level_name = (level or os.environ.get("PERDURE_LOG_LEVEL", "INFO")).upper()
    use_json = json if json is not None else os.environ.get("PERDURE_LOG_FORMAT") == "json"
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_credentials,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
