"""structlog setup: JSON lines to stderr, or a console renderer on a TTY.

Every record made inside an activity is bound to its workflow id, run id, activity type and
attempt, so one migration's lines can be picked out of a busy worker's log.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from structlog.typing import EventDict, WrappedLogger
from temporalio import activity

from flyaway.redaction import redact_event


def _bind_temporal_context(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    if activity.in_activity():
        info = activity.info()
        event.setdefault("workflow_id", info.workflow_id)
        event.setdefault("run_id", info.workflow_run_id)
        event.setdefault("activity", info.activity_type)
        event.setdefault("attempt", info.attempt)
    return event


def _temporal_extras(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Flatten what temporalio puts on its own log records (workflow and activity info)."""
    for key in ("temporal_workflow", "temporal_activity"):
        info = event.pop(key, None)
        if isinstance(info, dict):
            event.setdefault("workflow_id", info.get("workflow_id"))
            event.setdefault("run_id", info.get("run_id") or info.get("workflow_run_id"))
            if "activity_type" in info:
                event.setdefault("activity", info["activity_type"])
                event.setdefault("attempt", info.get("attempt"))
    return event


def configure_logging(json: bool | None = None, level: str = "INFO") -> None:
    """Configure structlog and route the standard library's records (temporalio's) through it."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _bind_temporal_context,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redact_event, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder(),
                           _temporal_extras],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, redact_event, renderer]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextmanager
def only_critical_logs() -> Iterator[None]:
    """Only critical records while the block runs, then the configuration it found: the CLI's in-process plan
    check would otherwise repeat the one line it fails with, and leave every later logger of the process muted."""
    saved = structlog.get_config()
    root = logging.getLogger()
    level = root.level
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
                        cache_logger_on_first_use=False)
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        structlog.configure(**saved)
        root.setLevel(level)
