from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import tmpfs, wait_until
from watchdog import logs
from watchdog.config import load_settings
from watchdog.process import LogFile


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="erpwatch")
    logs.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["logs", *argv])


# --- setup_logging ------------------------------------------------------------------------


@pytest.mark.usefixtures("restore_root_logger")
def test_text_log_has_timestamp_severity_and_goes_to_file(tmp_path: Path) -> None:
    console = io.StringIO()
    logs.setup_logging(load_settings(log_path=tmp_path / "logs"), stream=console)
    logging.getLogger("watchdog.test").info("target %s started", "erp")
    logging.getLogger("watchdog.test").debug("hidden without DEBUG")
    line = (tmp_path / "logs" / "erpwatch.log").read_text().strip()
    assert line == console.getvalue().strip()
    stamp, level, name, *message = line.split()
    assert stamp[:4].isdigit() and "T" in stamp
    assert (level, name, " ".join(message)) == ("INFO", "watchdog.test:", "target erp started")


@pytest.mark.usefixtures("restore_root_logger")
def test_debug_setting_enables_debug(tmp_path: Path) -> None:
    console = io.StringIO()
    logs.setup_logging(load_settings(log_path=tmp_path, debug=True), stream=console)
    logging.getLogger("watchdog.test").debug("details")
    assert "DEBUG" in console.getvalue() and "details" in console.getvalue()


@pytest.mark.usefixtures("restore_root_logger")
def test_json_format_one_object_per_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERPWATCH_LOG_FORMAT", "json")
    console = io.StringIO()
    logs.setup_logging(load_settings(log_path=tmp_path), stream=console)
    log = logging.getLogger("watchdog.test")
    log.warning("first", extra={"target": "erp"})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("second\nwith a newline")
    records = [json.loads(line) for line in console.getvalue().splitlines()]
    assert [r["message"] for r in records] == ["first", "second\nwith a newline"]
    assert records[0]["level"] == "WARNING" and records[0]["target"] == "erp"
    assert records[0]["ts"].endswith("Z") and records[0]["logger"] == "watchdog.test"
    assert "RuntimeError: boom" in records[1]["exc"]


@pytest.mark.usefixtures("restore_root_logger")
def test_secrets_are_redacted_everywhere(tmp_path: Path) -> None:
    console = io.StringIO()
    settings = load_settings(
        log_path=tmp_path, smtp_password="hunter2-pw", status_token="tok-123456"
    )
    logs.setup_logging(settings, stream=console)
    log = logging.getLogger("alerting.test")
    log.error("login with %s failed", "hunter2-pw")
    log.warning("token tok-123456 in message", extra={"header": "Bearer tok-123456"})
    try:
        raise ValueError("password was hunter2-pw")
    except ValueError:
        log.exception("oops")
    written = console.getvalue() + (tmp_path / "erpwatch.log").read_text()
    assert "hunter2-pw" not in written and "tok-123456" not in written
    assert "login with *** failed" in written and "password was ***" in written


@pytest.mark.usefixtures("restore_root_logger")
def test_a_reloads_new_secrets_are_redacted_and_the_old_stay(tmp_path: Path) -> None:
    console = io.StringIO()
    logs.setup_logging(
        load_settings(log_path=tmp_path, smtp_password="old-pw-1234"), stream=console
    )
    added = load_settings(webhook_urls=["https://hooks.example.com/services/N3W-T0KEN"])
    logs.add_secrets(added.secret_values())  # what `reload` does with the new settings
    log = logging.getLogger("alerting.test")
    log.warning("posting to %s failed", "https://hooks.example.com/services/N3W-T0KEN")
    log.warning("refused: Cannot POST /services/N3W-T0KEN; old password old-pw-1234")
    written = console.getvalue() + (tmp_path / "erpwatch.log").read_text()
    assert "N3W-T0KEN" not in written and "old-pw-1234" not in written
    assert "posting to *** failed" in written


def test_redact_filter_alone_handles_overlapping_secrets() -> None:
    redact = logs.RedactSecrets(["abc", "abcdef", ""])
    record = logging.makeLogRecord({"msg": "x=%s y=%s", "args": ("abcdef", "abc")})
    assert redact.filter(record)
    assert record.getMessage() == "x=*** y=***"


@pytest.mark.usefixtures("restore_root_logger")
def test_own_log_rotates_at_the_size_limit(tmp_path: Path) -> None:
    settings = load_settings(log_path=tmp_path, log_max_bytes=2048, log_backups=2)
    logs.setup_logging(settings, stream=io.StringIO())
    log = logging.getLogger("watchdog.test")
    for i in range(100):
        log.info("line %03d %s", i, "x" * 60)
    current = tmp_path / "erpwatch.log"
    backups = sorted(tmp_path.glob("erpwatch.log.*"))
    assert [p.name for p in backups] == ["erpwatch.log.1", "erpwatch.log.2"]
    for path in [current, *backups]:
        assert path.stat().st_size <= 2048
    assert "line 099" in current.read_text()
    assert "line 000" not in "".join(p.read_text() for p in [current, *backups])


@pytest.mark.usefixtures("restore_root_logger")
def test_no_backups_means_truncate(tmp_path: Path) -> None:
    settings = load_settings(log_path=tmp_path, log_max_bytes=2048, log_backups=0)
    logs.setup_logging(settings, stream=io.StringIO())
    for i in range(100):
        logging.getLogger("watchdog.test").info("line %03d %s", i, "x" * 60)
    assert (tmp_path / "erpwatch.log").stat().st_size <= 2048
    assert list(tmp_path.glob("erpwatch.log.*")) == []


@pytest.mark.usefixtures("restore_root_logger")
def test_setup_twice_replaces_its_handlers(tmp_path: Path) -> None:
    root = logging.getLogger()
    before = len(root.handlers)
    logs.setup_logging(load_settings(log_path=tmp_path), stream=io.StringIO())
    logs.setup_logging(load_settings(log_path=tmp_path), stream=io.StringIO())
    assert len(root.handlers) == before + 2


def _own_log_files(log_dir: Path) -> list[Path]:
    return [log_dir / "erpwatch.log", *sorted(log_dir.glob("erpwatch.log.*"))]


def _file_handler(handlers: list[logging.Handler]) -> Any:
    return next(h for h in handlers if getattr(h, "baseFilename", None))


@pytest.mark.usefixtures("restore_root_logger")
def test_own_log_stays_within_its_bound_even_with_huge_records(tmp_path: Path) -> None:
    settings = load_settings(log_path=tmp_path, log_max_bytes=2048, log_backups=2)
    logs.setup_logging(settings, stream=io.StringIO())
    log = logging.getLogger("watchdog.test")
    for i in range(200):
        log.info("record %03d %s", i, "y" * (10_000 if i % 7 == 0 else i))
    files = _own_log_files(tmp_path)
    assert [p.name for p in files] == ["erpwatch.log", "erpwatch.log.1", "erpwatch.log.2"]
    assert all(p.stat().st_size <= 2048 for p in files)
    assert sum(p.stat().st_size for p in files) <= 2048 * 3
    text = "".join(p.read_text() for p in files)
    assert "record 199" in text
    assert "y" * 10_000 not in text and "…\n" in text  # a record larger than a file is cut


class _DiskFull:
    """ENOSPC from the file handler's writer only (`LogFile._raw_write`) while ``full``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        real = LogFile._raw_write

        def write(fd: int, data: memoryview) -> int:
            if self.full:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(fd, data)

        monkeypatch.setattr(LogFile, "_raw_write", staticmethod(write))


@pytest.mark.usefixtures("restore_root_logger")
def test_own_log_on_a_full_disk_counts_quietly_and_reports_when_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = _DiskFull(monkeypatch)
    console = io.StringIO()
    handlers = logs.setup_logging(load_settings(log_path=tmp_path), stream=console)
    file = _file_handler(handlers)
    log = logging.getLogger("watchdog.test")
    log.info("before")
    disk.full = True
    for i in range(50):
        log.warning("lost %d", i)  # never raises
    assert file.dropped_records == 50 and file.dropped_bytes > 0
    assert capsys.readouterr().err == ""  # no "--- Logging error ---" traceback per record
    assert console.getvalue().count("lost") == 50  # the console still has them
    disk.full = False
    log.info("after")
    lines = (tmp_path / "erpwatch.log").read_text().splitlines()
    assert lines[0].endswith("before")
    assert lines[1] == (
        f"[erpwatch] {file.dropped_bytes} bytes of output dropped (ENOSPC: No space left on device)"
    )
    assert lines[2].endswith("after") and len(lines) == 3


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs (needs root), unmounted afterwards."""
    with tmpfs(tmp_path / "disk", "1m") as mount:
        yield mount


@pytest.mark.usefixtures("restore_root_logger")
def test_own_log_on_a_real_full_disk(tiny_disk: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = load_settings(log_path=tiny_disk, log_max_bytes=64 * 1024, log_backups=1)
    file = _file_handler(logs.setup_logging(settings, stream=io.StringIO()))
    filler = tiny_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"\0" * 4096)
    os.close(fd)
    log = logging.getLogger("watchdog.test")
    for i in range(2000):
        log.info("record %04d %s", i, "z" * 100)
    assert file.dropped_bytes > 0
    assert capsys.readouterr().err == ""
    filler.unlink()
    log.info("the disk has room again")
    text = "".join(p.read_text() for p in _own_log_files(tiny_disk) if p.exists())
    assert "bytes of output dropped (ENOSPC" in text
    assert text.endswith("the disk has room again\n")
    assert all(p.stat().st_size <= 64 * 1024 for p in _own_log_files(tiny_disk) if p.exists())


# --- repeated lines ---------------------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def limited() -> Iterator[tuple[logging.Logger, io.StringIO, logs.SuppressRepeats, FakeTime]]:
    """A private logger with one handler behind a SuppressRepeats(limit=3, window=60)."""
    clock = FakeTime()
    repeats = logs.SuppressRepeats(limit=3, window=60.0, clock=clock)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    handler.addFilter(repeats)
    repeats.attach([handler])
    log = logging.getLogger("watchdog.test.repeats")
    log.propagate, log.level = False, logging.DEBUG
    log.addHandler(handler)
    yield log, out, repeats, clock
    log.removeHandler(handler)
    log.propagate, log.level = True, logging.NOTSET


def test_repeats_pass_limit_times_then_one_summary_when_they_resume(
    limited: tuple[logging.Logger, io.StringIO, logs.SuppressRepeats, FakeTime],
) -> None:
    log, out, _, clock = limited
    for _ in range(20):
        log.error("spawn failed: %s", "EMFILE")
        clock.now += 1.0  # 20 lines in 20 s: one window
    assert out.getvalue().splitlines() == ["ERROR watchdog.test.repeats spawn failed: EMFILE"] * 3
    clock.now += 40.0  # the window (60 s from the first line) has ended
    log.error("spawn failed: %s", "EMFILE")
    assert out.getvalue().splitlines()[3:] == [
        "ERROR watchdog.test.repeats spawn failed: EMFILE (17 identical lines suppressed)",
        "ERROR watchdog.test.repeats spawn failed: EMFILE",
    ]


def test_summary_when_the_window_ends_without_the_line_coming_back(
    limited: tuple[logging.Logger, io.StringIO, logs.SuppressRepeats, FakeTime],
) -> None:
    log, out, repeats, clock = limited
    for _ in range(5):
        log.warning("probe refused")
    repeats.flush()
    assert "suppressed" not in out.getvalue()  # the window is still open
    clock.now += 60.0
    log.info("something else")
    assert out.getvalue().splitlines()[3:] == [
        "WARNING watchdog.test.repeats probe refused (2 identical lines suppressed)",
        "INFO watchdog.test.repeats something else",
    ]
    for _ in range(4):
        log.warning("probe refused")
    clock.now += 60.0
    repeats.flush()  # no new line at all: the periodic flush writes it
    assert out.getvalue().splitlines()[-1] == (
        "WARNING watchdog.test.repeats probe refused (1 identical lines suppressed)"
    )
    repeats.flush()
    assert out.getvalue().count("suppressed") == 2  # each summary once


def test_logger_level_and_message_are_counted_apart(
    limited: tuple[logging.Logger, io.StringIO, logs.SuppressRepeats, FakeTime],
) -> None:
    log, out, _, _ = limited
    other = log.getChild("other")
    for _ in range(5):
        log.error("same")
        log.warning("same")
        other.error("same")
        log.error("same %d", 2)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 * 3
    assert lines.count("ERROR watchdog.test.repeats same") == 3
    assert lines.count("ERROR watchdog.test.repeats.other same") == 3


def test_force_flush_and_eviction_write_pending_counts() -> None:
    clock = FakeTime()
    repeats = logs.SuppressRepeats(limit=1, window=60.0, clock=clock, max_keys=2)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(repeats)
    repeats.attach([handler])

    def emit(message: str) -> None:
        handler.handle(logging.makeLogRecord({"name": "t", "msg": message, "levelno": 40}))

    emit("a")
    emit("a")
    emit("b")
    emit("c")  # a third distinct line evicts "a", the oldest
    assert out.getvalue().splitlines() == ["a", "b", "a (1 identical lines suppressed)", "c"]
    emit("c")
    emit("c")
    repeats.flush(force=True)  # e.g. at shutdown: window still open
    assert out.getvalue().splitlines()[-1] == "c (2 identical lines suppressed)"


def test_one_filter_on_two_handlers_decides_each_record_once() -> None:
    clock = FakeTime()
    repeats = logs.SuppressRepeats(limit=2, window=60.0, clock=clock)
    outs = [io.StringIO(), io.StringIO()]
    handlers = [logging.StreamHandler(out) for out in outs]
    for handler in handlers:
        handler.addFilter(repeats)
    repeats.attach(handlers)
    log = logging.getLogger("watchdog.test.two")
    log.propagate = False
    for handler in handlers:
        log.addHandler(handler)
    try:
        for _ in range(6):
            log.error("twice")
        clock.now += 60.0
        log.error("twice")
    finally:
        for handler in handlers:
            log.removeHandler(handler)
        log.propagate = True
    expected = ["twice", "twice", "twice (4 identical lines suppressed)", "twice"]
    assert [out.getvalue().splitlines() for out in outs] == [expected, expected]


@pytest.mark.usefixtures("restore_root_logger")
def test_setup_logging_limits_identical_lines_and_redacts_the_summary(tmp_path: Path) -> None:
    console = io.StringIO()
    settings = load_settings(log_path=tmp_path, smtp_password="hunter2-pw")
    logs.setup_logging(settings, stream=console)
    log = logging.getLogger("watchdog.test")
    for _ in range(1000):
        log.error("accept failed: [Errno 24] Too many open files (pw %s)", "hunter2-pw")
    logs.flush_repeats(force=True)
    for written in (console.getvalue(), (tmp_path / "erpwatch.log").read_text()):
        lines = written.splitlines()
        assert len(lines) == logs.SuppressRepeats().limit + 1
        assert lines[-1].endswith(
            "accept failed: [Errno 24] Too many open files (pw ***) "
            f"({1000 - logs.SuppressRepeats().limit} identical lines suppressed)"
        )
        assert "hunter2-pw" not in written


# --- erpwatch logs ----------------------------------------------------------------------------


@pytest.fixture
def child_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ERPWATCH_LOG_PATH", str(tmp_path))
    (tmp_path / "erp.out.log").write_text("".join(f"out {i}\n" for i in range(10)))
    (tmp_path / "erp.err.log").write_text("err 0\nerr 1\n")
    return tmp_path


def test_logs_last_n_lines_of_both(child_logs: Path) -> None:
    out = io.StringIO()
    assert logs.run_logs(_parse("erp", "-n", "3"), out=out) == 0
    assert out.getvalue().splitlines() == [
        f"==> {child_logs / 'erp.out.log'} <==",
        "out 7",
        "out 8",
        "out 9",
        f"==> {child_logs / 'erp.err.log'} <==",
        "err 0",
        "err 1",
    ]


def test_logs_one_stream(child_logs: Path) -> None:
    out = io.StringIO()
    assert logs.run_logs(_parse("erp", "--stderr", "-n", "1"), out=out) == 0
    assert out.getvalue() == "err 1\n"
    out = io.StringIO()
    assert logs.run_logs(_parse("ERP", "--stdout", "-n", "2"), out=out) == 0
    assert out.getvalue() == "out 8\nout 9\n"


def test_logs_fill_up_from_the_rotated_file(child_logs: Path) -> None:
    (child_logs / "erp.out.log.1").write_text("old 0\nold 1\n")
    (child_logs / "erp.out.log").write_text("new 0\n")
    out = io.StringIO()
    assert logs.run_logs(_parse("erp", "--stdout", "-n", "2"), out=out) == 0
    assert out.getvalue() == "old 1\nnew 0\n"


def test_logs_unknown_target(child_logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert logs.run_logs(_parse("nope"), out=io.StringIO()) == 1
    err = capsys.readouterr().err
    assert "no log files for 'nope'" in err and "targets with logs: erp" in err


def test_tail_of_a_large_file(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    path.write_text("".join(f"line {i}\n" for i in range(50_000)))
    assert logs.tail_lines(path, 3) == ["line 49997", "line 49998", "line 49999"]
    assert logs.tail_lines(path, 0) == []


class ThreadSafeBuffer(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            return super().write(text)

    def text(self) -> str:
        with self._lock:
            return self.getvalue()


def test_follow_survives_copytruncate(child_logs: Path) -> None:
    out = ThreadSafeBuffer()
    stop = threading.Event()
    args = _parse("erp", "--stdout", "-n", "1", "-f")
    thread = threading.Thread(target=logs.run_logs, args=(args,), kwargs={"out": out, "stop": stop})
    thread.start()
    try:
        path = child_logs / "erp.out.log"
        wait_until(lambda: out.text() == "out 9\n", what="initial tail")
        with path.open("a") as file:
            file.write("appended 1\npartial")
        wait_until(lambda: "appended 1\n" in out.text(), what="appended line")
        assert "partial" not in out.text()
        with path.open("a") as file:
            file.write(" line\n")
        wait_until(lambda: "partial line\n" in out.text(), what="completed partial line")
        # copytruncate: the content is copied away, the file cut to zero, writes continue.
        (child_logs / "erp.out.log.1").write_bytes(path.read_bytes())
        with path.open("r+") as file:
            file.truncate(0)
        with path.open("a") as file:
            file.write("after rotation\n")
        wait_until(lambda: "after rotation\n" in out.text(), what="line after truncation")
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert out.text() == "out 9\nappended 1\npartial line\nafter rotation\n"


def test_follow_both_streams_marks_switches(child_logs: Path) -> None:
    out = ThreadSafeBuffer()
    stop = threading.Event()
    paths = logs.child_log_paths(child_logs, "erp", ("out", "err"))
    positions = {path: path.stat().st_size for path in paths}  # no race with the writes below
    thread = threading.Thread(
        target=logs.follow,
        args=(paths, out),
        kwargs={"stop": stop, "poll_interval": 0.01, "positions": positions},
    )
    thread.start()
    try:
        with paths[1].open("a") as file:
            file.write("new error\n")
        wait_until(lambda: "new error" in out.text(), what="stderr line")
        with paths[0].open("a") as file:
            file.write("new output\n")
        wait_until(lambda: "new output" in out.text(), what="stdout line")
    finally:
        stop.set()
        thread.join(5)
    assert out.text() == (f"\n==> {paths[1]} <==\nnew error\n\n==> {paths[0]} <==\nnew output\n")


def _read_until(proc: subprocess.Popen[bytes], needle: bytes, seen: bytearray) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + 10
    while needle not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out waiting for {needle!r}; got {bytes(seen)!r}"
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, f"erpwatch logs exited early; got {bytes(seen)!r}"
            seen += chunk


def test_erpwatch_logs_follow_until_ctrl_c(child_logs: Path) -> None:
    env = {**os.environ, "ERPWATCH_LOG_PATH": str(child_logs)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "watchdog.cli", "logs", "erp", "--stderr", "-n", "1", "-f"],
        env=env,
        stdout=subprocess.PIPE,
    )
    try:
        seen = bytearray()
        _read_until(proc, b"err 1\n", seen)
        with (child_logs / "erp.err.log").open("a") as file:
            file.write("Traceback: boom\n")
        _read_until(proc, b"Traceback: boom\n", seen)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
