"""Logging setup: JSON lines (or readable text on a terminal), with secrets redacted."""

import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from router.redact import Redactor

__all__ = ["JsonFormatter", "RedactingFilter", "RepeatFilter", "setup_logging"]

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_REDACTED_TYPES = (str, dict, list)  # a tuple: ``str | dict | list`` is rebuilt per call


class RedactingFilter(logging.Filter):
    """Redact every record's message and extra fields before any handler sees them."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.redactor(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and isinstance(value, _REDACTED_TYPES):
                setattr(record, key, self._redact(value))
        return True

    def _redact(self, value: Any) -> Any:
        """Strings redacted, also inside dicts and lists (the event a log-only
        channel shows); everything else as it is."""
        if isinstance(value, str):
            return self.redactor(value)
        return self.redactor.tree(value)  # credential-named fields masked too


class RepeatFilter(logging.Filter):
    """The same warning or error (same logger, level and text) at most once per
    ``window`` seconds: a failing disk refuses every request, and the log that says so
    must not fill what is left of it. The next one let through says how many were
    dropped (``repeated``). Info and debug records always pass."""

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self._seen: dict[tuple[str, int, str], list[float | int]] = {}  # -> [since, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, record.getMessage())
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.window:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.repeated = seen[1]
        if len(self._seen) >= 1000:  # bounded: messages can carry any text
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window}
            if len(self._seen) >= 1000:
                self._seen.clear()
        self._seen[key] = [now, 0]
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_text:
            entry["exception"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """Readable lines for a terminal, extras appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{key}={value}" for key, value in record.__dict__.items() if key not in _STANDARD
        )
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.getMessage()}"
        line = f"{line}  {extras}" if extras else line
        return f"{line}\n{record.exc_text}" if record.exc_text else line


def setup_logging(level: str, fmt: str, redactor: Redactor) -> None:
    """Configure the root logger once: level, format (``json``/``text``/``auto``), redaction."""
    handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(RedactingFilter(redactor))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # Neither format shows the caller's file and line, the thread or the process, so
    # skip collecting them for every record (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


def update_redactor(redactor: Redactor) -> None:
    """Point every redacting filter at a new redactor (after the rules reload)."""
    for handler in logging.getLogger().handlers:
        for filt in handler.filters:
            if isinstance(filt, RedactingFilter):
                filt.redactor = redactor
