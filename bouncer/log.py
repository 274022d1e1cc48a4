"""Logging set-up: structlog events, plus stdlib logging (asyncio, libraries) in the same output.

One event per line (SPEC §10) so journald and log shippers see whole events; a console
renderer for humans at a terminal, JSON lines otherwise. The level lives in this module
rather than in each logger, so calling configure_logging() again (SIGHUP) changes it for
loggers that were already bound, e.g. per session.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
FORMATS = ("auto", "console", "json")

# Level of each structlog method name; names not listed (msg) always pass.
_METHOD_LEVELS = {**LEVELS, "warn": logging.WARNING, "exception": logging.ERROR,
                  "critical": logging.CRITICAL, "fatal": logging.CRITICAL}
_threshold = logging.INFO
_stdlib_handler: logging.Handler | None = None


def configure_logging(format: str = "auto", level: str = "info", *,
                      stream: TextIO | None = None) -> None:
    """Send all logging to ``stream`` (default: the current ``sys.stderr``).

    ``format`` is auto/console/json (auto: console on a TTY, else JSON); ``level`` is
    debug/info/warning/error. Under systemd (JOURNAL_STREAM names this stream) lines carry
    no timestamp, since the journal adds its own, and start with a ``<N>`` syslog priority
    that journald strips and records, so ``journalctl -p warning`` works. Records from
    stdlib logging are shown at WARNING and above: libraries are chatty below that.
    """
    global _threshold, _stdlib_handler
    if format not in FORMATS or level not in LEVELS:
        raise ValueError(f"format must be one of {FORMATS}, level one of {tuple(LEVELS)}")
    stream = stream or sys.stderr
    tty = stream.isatty()
    console = format == "console" or (format == "auto" and tty)
    journal = _journal(stream)

    stamp: list[Processor] = []
    if journal is not None:
        pass  # the journal stamps each line itself
    elif not console:
        stamp = [structlog.processors.TimeStamper(fmt="iso", utc=True)]
    else:
        stamp = [structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False)]

    render: list[Processor]
    if not console:
        render = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    elif tty:
        # A person is reading: keep multi-line tracebacks readable.
        render = [structlog.dev.ConsoleRenderer(colors=True)]
    else:
        render = [_one_line(structlog.dev.ConsoleRenderer(colors=False))]
    if journal:
        render = [*render[:-1], _syslog_priority(render[-1])]

    _threshold = LEVELS[level]
    structlog.configure(
        processors=[_drop_below_threshold, structlog.contextvars.merge_contextvars,
                    structlog.processors.add_log_level, *stamp, *render],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )

    root = logging.getLogger()
    if _stdlib_handler is not None:
        root.removeHandler(_stdlib_handler)
    _stdlib_handler = logging.StreamHandler(stream)
    _stdlib_handler.setLevel(max(logging.WARNING, _threshold))
    _stdlib_handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.processors.add_log_level,
                           structlog.stdlib.add_logger_name, *stamp],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
    ))
    root.addHandler(_stdlib_handler)


def _drop_below_threshold(_logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    if _METHOD_LEVELS.get(method_name, logging.CRITICAL) < _threshold:
        raise structlog.DropEvent
    return event_dict


def _journal(stream: TextIO) -> bool | None:
    """Whether ``stream`` is systemd's journal: None if not, True if JOURNAL_STREAM names
    its file (device:inode, as sd_journal_stream_fd(3) says to check), False when it
    cannot be checked (no file descriptor) but JOURNAL_STREAM is set."""
    value = os.environ.get("JOURNAL_STREAM")
    if not value:
        return None
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return True if value == f"{st.st_dev}:{st.st_ino}" else None


# sd-daemon(3) priority prefixes, by structlog method name (stdlib records: levelname).
_PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3,
               "critical": 2, "fatal": 2}


def _syslog_priority(renderer: Processor) -> Processor:
    """Prefix each line with ``<N>`` so journald records the event's priority."""
    def render(logger: Any, method_name: str, event_dict: EventDict) -> str:
        line = str(renderer(logger, method_name, event_dict))
        return f"<{_PRIORITIES.get(method_name, 5)}>{line}"
    return render


def _one_line(renderer: Processor) -> Processor:
    """Escape line breaks (tracebacks, peer-supplied text) so one event stays one line."""
    def render(logger: Any, method_name: str, event_dict: EventDict) -> str:
        line = renderer(logger, method_name, event_dict)
        return str(line).replace("\r", "\\r").replace("\n", "\\n")
    return render
