"""erpwatch's own logging, and ``erpwatch logs`` for the children's output.

setup_logging(settings, *, stream=None) -> list[logging.Handler]
    # console (stderr) + LOG_PATH/erpwatch.log rotated at LOG_MAX_BYTES, LOG_BACKUPS kept;
    # DEBUG when DEBUG is set; LOG_FORMAT=json → one JSON object per line; every handler
    # redacts the SMTP password and the status token. Calling it again replaces them.
RedactSecrets(secrets)                  # the logging.Filter doing the redaction
add_secrets(secrets)                    # a reload's new secrets join every handler's redaction
SuppressRepeats(limit=5, window=60.0, clock=time.monotonic)
    # the logging.Filter (on every handler setup_logging installs) that lets the same
    # logger+level+message through at most `limit` times per `window`, then writes one
    # "<message> (N identical lines suppressed)" when it comes back or its window ends.
flush_repeats(force=False)              # write the summaries of ended windows (all if force)
tail_lines(path, n) -> list[str]        # last n lines (filled from path.1 after a rotation)
follow(paths, out, stop=..., poll_interval=...)   # tail -f that survives copytruncate
register(subparsers)                    # `erpwatch logs TARGET [-n N] [-f] [--stdout|--stderr]`
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from watchdog.process import LogFile
from watchdog.settings import Settings

LOG_FILE_NAME = "erpwatch.log"
REDACTED = "***"
_TEXT_FORMAT = "%(asctime)s %(levelname)-8s %(name)s: %(message)s"
# Loggers that are chatty at INFO (httpx logs every request, i.e. every health probe).
_QUIET_UNLESS_DEBUG = ("httpx", "httpcore", "aiosmtplib", "asyncio", "uvicorn.access")
_MARK = "_erpwatch_handler"


# --- erpwatch's own logging ---------------------------------------------------------------


class RedactSecrets(logging.Filter):
    """Replaces every secret value in a record's message, arguments, traceback and extra
    string fields with ``***``. Defence in depth: secrets should never be logged at all."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is replaced whole.
        self.secrets = sorted({*self.secrets, *(s for s in secrets if s)}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        record.msg = self.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, key, self.redact(value))
        return True


_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

_DECIDED = "_erpwatch_repeat"  # (filter token, keep): one decision per record and filter
_SUMMARY = "_erpwatch_repeat_summary"
_SUMMARY_MESSAGE_MAX = 500


@dataclass
class _Window:
    start: float
    name: str
    levelno: int
    message: str
    passed: int = 1
    suppressed: int = 0


class SuppressRepeats(logging.Filter):
    """Rate-limits identical lines: the same logger, level and formatted message passes at
    most ``limit`` times per ``window`` seconds (counted from its first occurrence); the rest
    are counted, and one ``<message> (N identical lines suppressed)`` line is written when the
    message comes back after its window, when `flush` sees the window has ended, or when it
    is evicted (at most ``max_keys`` distinct messages are tracked).

    One instance may sit on several handlers: each record is decided once, and summaries go
    to the handlers given to `attach` (else through the record's logger).
    """

    def __init__(
        self,
        *,
        limit: int = 5,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1000,
    ) -> None:
        super().__init__()
        if limit < 1 or window <= 0 or max_keys < 1:
            raise ValueError("need limit >= 1, window > 0, max_keys >= 1")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._max_keys = max_keys
        self._token = object()
        self._lock = threading.Lock()
        # Insertion order is start order (a resumed key is re-inserted): expiry looks at
        # the front only.
        self._windows: dict[tuple[str, int, str], _Window] = {}
        self._handlers: list[logging.Handler] = []

    def attach(self, handlers: Iterable[logging.Handler]) -> None:
        """Where the summary lines go (the handlers this filter sits on)."""
        self._handlers = list(handlers)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SUMMARY, False):
            return True
        decided = record.__dict__.get(_DECIDED)
        if decided is not None and decided[0] is self._token:
            return bool(decided[1])
        try:
            key = (record.name, record.levelno, record.getMessage())
        except Exception:
            return True  # a broken format: let the handler report it as usual
        with self._lock:
            now = self._clock()
            summaries = self._expire(now)
            window = self._windows.get(key)
            if window is None:
                if len(self._windows) >= self._max_keys:
                    oldest = next(iter(self._windows))
                    summaries.append(self._windows.pop(oldest))
                self._windows[key] = _Window(now, record.name, record.levelno, key[2])
                keep = True
            elif window.passed < self.limit:
                window.passed += 1
                keep = True
            else:
                window.suppressed += 1
                keep = False
        record.__dict__[_DECIDED] = (self._token, keep)
        self._write(summaries)
        return keep

    def flush(self, *, force: bool = False) -> None:
        """Write the summaries of windows that have ended (of every window when ``force``)."""
        with self._lock:
            summaries = self._expire(self._clock())
            if force:
                for window in self._windows.values():
                    if window.suppressed:
                        summaries.append(dataclasses.replace(window))
                        window.suppressed = 0
        self._write(summaries)

    def _expire(self, now: float) -> list[_Window]:
        ended: list[_Window] = []
        while self._windows:
            key, window = next(iter(self._windows.items()))
            if now - window.start < self.window:
                break
            del self._windows[key]
            ended.append(window)
        return ended

    def _write(self, windows: Iterable[_Window]) -> None:
        for window in windows:
            if not window.suppressed:
                continue
            message = window.message
            if len(message) > _SUMMARY_MESSAGE_MAX:
                message = message[:_SUMMARY_MESSAGE_MAX] + "…"
            summary = logging.LogRecord(
                window.name,
                window.levelno,
                __file__,
                0,
                "%s (%d identical lines suppressed)",
                (message, window.suppressed),
                None,
            )
            setattr(summary, _SUMMARY, True)
            if not self._handlers:
                logging.getLogger(window.name).handle(summary)
            for handler in self._handlers:
                if summary.levelno >= handler.level:
                    handler.handle(summary)


def flush_repeats(*, force: bool = False) -> None:
    """`SuppressRepeats.flush` for the filters on the root logger's handlers."""
    flushed: set[int] = set()
    for handler in logging.getLogger().handlers:
        for item in handler.filters:
            if isinstance(item, SuppressRepeats) and id(item) not in flushed:
                flushed.add(id(item))
                item.flush(force=force)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, message, extra fields,
    and exc (the formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                payload[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            payload["exc"] = record.exc_text
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2025-01-31T12:00:00.123+0000 WARNING  watchdog.monitor: message``"""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = datetime.fromtimestamp(record.created).astimezone()
        return stamp.isoformat(timespec="milliseconds")


_CUT_RECORD = "…\n".encode()  # ends a record cut to fit in one file


class _RotatingFileHandler(logging.Handler):
    """erpwatch's own log file, bounded like the children's logs (a `LogFile`): at most
    ``maxBytes * (backupCount + 1)`` bytes. The file is renamed to ``.1`` … ``.N`` before a
    record would take it past ``maxBytes`` (``backupCount=0``: it is started afresh); a record
    longer than ``maxBytes`` is cut. A write error (a full disk) never raises and never prints
    (the stdlib handler prints a traceback per record through ``handleError``): the records
    are dropped and counted, and one line in the file reports the count once writing works
    again."""

    def __init__(
        self, filename: Path, maxBytes: int, backupCount: int, encoding: str = "utf-8"
    ) -> None:
        super().__init__()
        self.baseFilename = os.path.abspath(filename)
        self.encoding = encoding
        self.dropped_records = 0
        self._file = LogFile(Path(filename), maxBytes, backupCount)
        try:
            self._file.open()
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise  # a wrong path is a configuration error worth stopping for
            # a full disk: opening is retried with each record

    @property
    def dropped_bytes(self) -> int:
        return self._file.dropped_total

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + "\n"
        except Exception:
            self.handleError(record)  # a broken format string: a bug, reported as usual
            return
        data = text.encode(self.encoding, errors="backslashreplace")
        limit = self._file.max_bytes
        if len(data) > limit:
            kept = data[: max(limit - len(_CUT_RECORD), 0)]
            data = kept.decode(self.encoding, errors="ignore").encode(self.encoding) + _CUT_RECORD
        before = self._file.dropped_total
        self._file.write(data)
        if self._file.dropped_total != before:
            self.dropped_records += 1

    def close(self) -> None:
        with self.lock if self.lock is not None else contextlib.nullcontext():
            self._file.close()
        super().close()


def add_secrets(secrets: Iterable[str]) -> None:
    """A reload's new secrets (a webhook added, a new password) join the redaction of every
    handler `setup_logging` installed; the old ones stay (a line about a removed webhook
    may still come)."""
    for handler in logging.getLogger().handlers:
        if getattr(handler, _MARK, False):
            for found in handler.filters:
                if isinstance(found, RedactSecrets):
                    found.add(secrets)


def setup_logging(settings: Settings, *, stream: IO[str] | None = None) -> list[logging.Handler]:
    """Configure the root logger for erpwatch; returns the handlers it installed."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _MARK, False):
            root.removeHandler(handler)
            handler.close()

    settings.log_path.mkdir(parents=True, exist_ok=True)
    formatter: logging.Formatter = (
        JsonFormatter() if settings.log_format == "json" else TextFormatter()
    )
    redact = RedactSecrets(settings.secret_values())
    repeats = SuppressRepeats()
    console = logging.StreamHandler(sys.stderr if stream is None else stream)
    file = _RotatingFileHandler(
        settings.log_path / LOG_FILE_NAME,
        maxBytes=settings.log_max_bytes,
        backupCount=settings.log_backups,
        encoding="utf-8",
    )
    handlers: list[logging.Handler] = [console, file]
    repeats.attach(handlers)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(repeats)  # first: a suppressed line costs no redaction
        handler.addFilter(redact)
        setattr(handler, _MARK, True)
        root.addHandler(handler)

    level = logging.DEBUG if settings.debug else logging.INFO
    root.setLevel(level)
    for name in _QUIET_UNLESS_DEBUG:
        logging.getLogger(name).setLevel(logging.NOTSET if settings.debug else logging.WARNING)
    logging.captureWarnings(True)
    return handlers


# --- the children's log files ---------------------------------------------------------------


def child_log_paths(log_dir: Path, target: str, streams: Sequence[str]) -> list[Path]:
    """``LOG_PATH/<target>.out.log`` / ``.err.log`` for the chosen streams ("out", "err")."""
    return [log_dir / f"{target}.{stream}.log" for stream in streams]


def _read_tail(path: Path, n: int, end: int | None = None, block: int = 64 * 1024) -> list[str]:
    if n <= 0 or not path.exists():
        return []
    with path.open("rb") as file:
        size = file.seek(0, os.SEEK_END)
        end = size if end is None else min(end, size)
        data = b""
        while end > 0 and data.count(b"\n") <= n:
            start = max(0, end - block)
            file.seek(start)
            data = file.read(end - start) + data
            end = start
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-n:]


def tail_lines(path: Path, n: int, end: int | None = None) -> list[str]:
    """The last ``n`` lines of ``path`` (of its first ``end`` bytes if given); right after a
    rotation, filled up from ``path.1``."""
    lines = _read_tail(path, n, end)
    if len(lines) < n:
        lines = _read_tail(path.with_name(path.name + ".1"), n - len(lines)) + lines
    return lines


@dataclass
class _Followed:
    path: Path
    position: int = 0
    inode: int | None = None
    pending: bytes = b""


def follow(
    paths: Sequence[Path],
    out: IO[str],
    *,
    stop: threading.Event,
    poll_interval: float = 0.2,
    positions: dict[Path, int] | None = None,
) -> None:
    """Print lines appended to ``paths`` until ``stop`` is set, like ``tail -F``.

    A file that shrinks was truncated in place (copytruncate rotation): reading restarts at
    its beginning. A file replaced by another (rename rotation) is reopened. With several
    files, a ``==> path <==`` header marks each switch between them. Reading starts at
    ``positions[path]`` when given, else at the current end of each file.
    """
    followed = [_Followed(path) for path in paths]
    for item in followed:
        if item.path.exists():
            stat = item.path.stat()
            item.inode = stat.st_ino
            item.position = stat.st_size
            if positions is not None and item.path in positions:
                item.position = min(positions[item.path], stat.st_size)
    last_shown: Path | None = paths[0] if len(paths) == 1 else None
    while True:
        for item in followed:
            chunk = _read_new(item)
            if chunk is None:
                continue
            item.pending += chunk
            complete, _, item.pending = item.pending.rpartition(b"\n")
            if not complete:
                continue
            if item.path != last_shown:
                out.write(f"\n==> {item.path} <==\n")
                last_shown = item.path
            out.write(complete.decode("utf-8", errors="replace") + "\n")
            out.flush()
        if stop.wait(poll_interval):
            return


def _read_new(item: _Followed) -> bytes | None:
    try:
        stat = item.path.stat()
    except FileNotFoundError:
        return None
    if stat.st_ino != item.inode or stat.st_size < item.position:
        # Replaced, or truncated by copytruncate: start over at the beginning.
        item.inode, item.position, item.pending = stat.st_ino, 0, b""
    if stat.st_size == item.position:
        return None
    with item.path.open("rb") as file:
        file.seek(item.position)
        chunk = file.read()
    item.position += len(chunk)
    return chunk


# --- `erpwatch logs` ------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "logs",
        help="show a target's stdout/stderr",
        description="Show the output of a supervised process from LOG_PATH.",
    )
    parser.add_argument("target", metavar="TARGET", help="target name (e.g. backend)")
    parser.add_argument(
        "-n", "--lines", type=int, default=50, metavar="N", help="last N lines (default 50)"
    )
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines until Ctrl+C"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--stdout", dest="streams", action="store_const", const=("out",), help="stdout only"
    )
    which.add_argument(
        "--stderr", dest="streams", action="store_const", const=("err",), help="stderr only"
    )
    parser.set_defaults(handler=run_logs, streams=("out", "err"))


def _resolve_target(log_dir: Path, target: str) -> str | None:
    if any((log_dir / f"{target}.{s}.log").exists() for s in ("out", "err")):
        return target
    if log_dir.is_dir():
        for path in sorted(log_dir.glob("*.log")):
            stem, _, rest = path.name.partition(".")
            if stem.lower() == target.lower() and rest in ("out.log", "err.log"):
                return stem
    return None


def run_logs(
    args: argparse.Namespace, *, out: IO[str] | None = None, stop: threading.Event | None = None
) -> int:
    from watchdog.config import load_settings  # the CLI's: validated here, in-process

    out = sys.stdout if out is None else out
    settings = load_settings()
    log_dir = settings.log_path
    name = _resolve_target(log_dir, args.target)
    if name is None:
        known = sorted({p.name.split(".", 1)[0] for p in log_dir.glob("*.out.log")})
        hint = f" (targets with logs: {', '.join(known)})" if known else ""
        print(f"erpwatch: no log files for {args.target!r} in {log_dir}{hint}", file=sys.stderr)
        return 1
    paths = child_log_paths(log_dir, name, args.streams)
    # Sizes first: -f continues exactly where the printed tail ends.
    positions = {path: path.stat().st_size for path in paths if path.exists()}
    for path in paths:
        lines = tail_lines(path, args.lines, positions.get(path, 0))
        if len(paths) > 1:
            out.write(f"==> {path} <==\n")
        out.writelines(line + "\n" for line in lines)
    out.flush()
    if not args.follow:
        return 0
    if stop is None and threading.current_thread() is threading.main_thread():
        # Ctrl+C must end -f even when started with SIGINT ignored (a background job of a
        # non-interactive shell inherits that).
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        follow(paths, out, stop=threading.Event() if stop is None else stop, positions=positions)
    except KeyboardInterrupt:  # Ctrl+C is how -f ends: not an error
        out.write("\n")
    return 0
