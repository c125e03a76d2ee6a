"""Structured logging for every Qilu process, with national ID numbers and names masked before output."""

from __future__ import annotations

import logging
import re
import sys

import structlog

from fhir_profiles.identifiers import mask_name, mask_national_id

# Anything that looks like a resident ID number, wherever it appears in a log value.
_NATIONAL_ID_PATTERN = re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])")
# Bearer tokens in URLs (the consult WebSocket takes ?token=...): redacted wherever a line quotes a URL.
_URL_TOKEN_PATTERN = re.compile(r"((?:access_)?token=)[^&\s\"']+")
# Keys whose values are people's names; masked whatever they hold.
_NAME_KEYS = frozenset({"name", "patient_name", "family", "given", "full_name", "holder_name"})


def _mask_value(value):
    if isinstance(value, str):
        value = _URL_TOKEN_PATTERN.sub(r"\1[redacted]", value)
        return _NATIONAL_ID_PATTERN.sub(lambda m: mask_national_id(m.group(0)), value)
    if isinstance(value, dict):
        return {k: _mask_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mask_value(v) for v in value]
    return value


def mask_personal_data(_logger, _method, event_dict: dict) -> dict:
    """structlog processor: the last step before rendering, so nothing bypasses it."""
    for key, value in list(event_dict.items()):
        if key in _NAME_KEYS and isinstance(value, str):
            event_dict[key] = mask_name(value)
        else:
            event_dict[key] = _mask_value(value)
    return event_dict


def configure_logging(log_format: str = "json", level: str = "INFO") -> None:
    renderer = structlog.processors.JSONRenderer() if log_format == "json" else structlog.dev.ConsoleRenderer()
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[*shared, mask_personal_data, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    # Library loggers (uvicorn, celery, motor) go through the same masking and rendering; our own lines were
    # masked by the chain above, so each line is masked once.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, mask_personal_data],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
        # A uvicorn started earlier in this process set its own levels; ours decide from now on.
        logging.getLogger(name).setLevel(logging.NOTSET)
    # Access lines duplicate our own request log line.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
