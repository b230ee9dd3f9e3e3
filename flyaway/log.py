"""structlog setup: JSON lines to stderr, or a console renderer on a TTY.

Every record made inside an activity is bound to its workflow id, run id, activity type and
attempt, so one migration's lines can be picked out of a busy worker's log.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from temporalio import activity

from flyaway.redaction import redact_event


def _bind_temporal_context(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    if activity.in_activity():
        info = activity.info()
        event.setdefault("workflow_id", info.workflow_id)
        event.setdefault("run_id", info.workflow_run_id)
        event.setdefault("activity", info.activity_type)
        event.setdefault("attempt", info.attempt)
    return event


def configure_logging(json: bool | None = None, level: str = "INFO") -> None:
    """Configure structlog and the standard library logger once for this process."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _bind_temporal_context,
            structlog.processors.format_exc_info,
            redact_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "boto3", "urllib3", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
