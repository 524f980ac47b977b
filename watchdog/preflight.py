"""Pre-flight checks: ``erpwatch check``, and the fast subset ``erpwatch run`` refuses on.

@dataclass(frozen=True) class CheckResult: name, ok, detail, hint, holder
fast_checks(settings) -> list[CheckResult]
    # no network, no SMTP: targets configured, commands executable, workdirs exist,
    # log directory writable, the database a usable SQLite file (or none yet), health
    # ports free (naming the holder), the status server's address allowed and its port free.
    # Everything `erpwatch run` would refuse on is here, so `check` passes only what runs.
async smtp_check(settings) -> CheckResult     # connect + STARTTLS/TLS + login, timeout
find_port_holder(host, port) -> PortHolder | None
end_stale(holder, argv, grace) -> CheckResult   # SIGTERM → grace → SIGKILL, by PID
format_results(results) -> str                  # one "✔/✘/⚠ name: detail" line each
variable_warnings() -> list[CheckResult]        # ⚠ unknown ERPWATCH_* names (never fatal)
register(subparsers)                            # erpwatch check [--kill-stale]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import math
import os
import shutil
import socket
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from watchdog.errors import ConfigError
from watchdog.logs import LOG_FILE_NAME
from watchdog.settings import ENV_PREFIX, Settings, TargetConfig, status_bind_problem
from watchdog.store import SCHEMA_VERSION

OK_MARK = "✔"
FAIL_MARK = "✘"
WARN_MARK = "⚠"
SQLITE_MAGIC = b"SQLite format 3\x00"
GRACE_MAX_S = 600.0
EXIT_FAILED = 1
EXIT_CONFIG = 2


@dataclass(frozen=True)
class PortHolder:
    """The process listening on a port; ``pid`` is None when it is not visible to us."""

    pid: int | None
    name: str | None = None
    cmdline: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.pid is None:
            return "a process erpwatch cannot see (another user's; try `ss -ltnp` as root)"
        return f"pid {self.pid} ({self.name or '?'}: {_one_line(self.cmdline) or '?'})"


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str = ""
    hint: str = ""
    target: str | None = None
    holder: PortHolder | None = None  # set when a health port is held
    superseded: bool = False  # a failure fixed by a later step (--kill-stale); not counted
    warning: bool = False  # ok (never fatal) but worth a look: shown with ⚠ and its hint


def _one_line(argv: Sequence[str], limit: int = 200) -> str:
    text = " ".join(" ".join(arg.split()) for arg in argv)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def passed(results: Sequence[CheckResult]) -> bool:
    return all(result.ok or result.superseded for result in results)


def format_results(results: Sequence[CheckResult]) -> str:
    lines = []
    for result in results:
        mark = WARN_MARK if result.warning else OK_MARK if result.ok else FAIL_MARK
        lines.append(f"{mark} {result.name}" + (f": {result.detail}" if result.detail else ""))
        if (result.warning or not result.ok) and not result.superseded and result.hint:
            lines.append(f"    hint: {result.hint}")
    return "\n".join(lines)


# --- fast checks (no network beyond binding a local port) ---------------------------------


def fast_checks(settings: Settings) -> list[CheckResult]:
    """Everything that can be checked in milliseconds without the network or SMTP."""
    targets = settings.targets_resolved()
    results = [config_result(targets)]
    for target in targets:
        results.append(check_command(target))
        if target.workdir is not None:
            results.append(check_workdir(target))
    results.append(check_log_dir(settings.log_path))
    results.append(check_database(settings.event_db_path))
    for target in targets:
        if target.health_url:
            results.append(check_port(target))
    if settings.status_enabled:
        results.append(check_status_server(settings))
    return results


def variable_warnings() -> list[CheckResult]:
    """A ⚠ line per ``ERPWATCH_*`` variable that is no setting (a typo is otherwise ignored)."""
    from watchdog.config import unknown_variables

    return [
        CheckResult(
            text,
            True,
            hint="it is ignored: fix its name or remove it (environment or .env)",
            warning=True,
        )
        for text in unknown_variables()
    ]


def config_result(targets: Sequence[TargetConfig]) -> CheckResult:
    if not targets:
        return CheckResult(
            "configuration",
            False,
            "no target configured",
            "set ERPWATCH_COMMAND (and ERPWATCH_HEALTH_URL), or ERPWATCH_TARGETS__<NAME>__COMMAND",
        )
    names = ", ".join(target.name for target in targets)
    return CheckResult("configuration", True, f"{len(targets)} target(s): {names}")


def resolve_executable(target: TargetConfig) -> str | None:
    """Where ``argv[0]`` is found, as the child would find it; None when it is not."""
    program = target.argv[0]
    if os.sep in program:
        path = Path(program)
        if not path.is_absolute() and target.workdir is not None:
            path = target.workdir / path  # POSIX: relative to the child's cwd
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which(program)


def check_command(target: TargetConfig) -> CheckResult:
    name = f"command ({target.name})"
    program = target.argv[0]
    found = resolve_executable(target)
    if found is not None:
        return CheckResult(name, True, found, target=target.name)
    if os.sep in program:
        where = Path(program)
        if not where.is_absolute() and target.workdir is not None:
            where = target.workdir / where
        reason = "not executable" if where.exists() else "not found"
        hint = f"chmod +x {where}" if where.exists() else "check the path in the command"
        return CheckResult(name, False, f"{where}: {reason}", hint, target=target.name)
    return CheckResult(
        name,
        False,
        f"{program!r} not found on PATH",
        "use an absolute path (e.g. /opt/erp/.venv/bin/uvicorn) or fix PATH",
        target=target.name,
    )


def check_workdir(target: TargetConfig) -> CheckResult:
    name = f"working directory ({target.name})"
    workdir = target.workdir
    assert workdir is not None
    if workdir.is_dir():
        return CheckResult(name, True, str(workdir), target=target.name)
    reason = "is not a directory" if workdir.exists() else "does not exist"
    return CheckResult(
        name, False, f"{workdir} {reason}", "create it or fix ERPWATCH_WORKDIR", target=target.name
    )


def _probe_write(directory: Path) -> str | None:
    """None when a file can be created in ``directory``, else the reason."""
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".erpwatch-check-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def check_writable_dir(label: str, directory: Path) -> CheckResult:
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return CheckResult(label, False, f"{existing} is not a directory", "fix the path")
    reason = _probe_write(existing)
    if reason is not None:
        return CheckResult(
            label,
            False,
            f"{existing} not writable ({reason})",
            f"chown/chmod {existing} for the user running erpwatch, or choose another path",
        )
    detail = str(directory) if existing == directory else f"{directory} (will be created)"
    return CheckResult(label, True, detail)


def check_log_dir(directory: Path) -> CheckResult:
    result = check_writable_dir("log directory", directory)
    log_file = directory / LOG_FILE_NAME
    if result.ok and log_file.exists():
        if not log_file.is_file():
            return CheckResult(
                "log directory", False, f"{log_file} is not a file", "move it out of the way"
            )
        if not os.access(log_file, os.W_OK):
            return CheckResult(
                "log directory",
                False,
                f"{log_file} is not writable",
                f"chown {log_file} to the user running erpwatch",
            )
    return result


def check_database(path: Path) -> CheckResult:
    """The database's directory is writable and the file, if there is one, is an SQLite
    database erpwatch can use (not a directory, not some other file, not a newer schema)."""
    name = "event database"
    fix = f"point {ENV_PREFIX}DB_PATH at a file (unset: LOG_PATH/erpwatch.db)"
    if path.is_dir():
        return CheckResult(name, False, f"{path} is a directory, not a database file", fix)
    if path.exists() and not path.is_file():
        return CheckResult(name, False, f"{path} is not a regular file", fix)
    result = check_writable_dir(name, path.parent)
    if not result.ok:
        return result
    if not path.exists():
        return CheckResult(name, True, f"{path} (will be created)")
    if not os.access(path, os.R_OK | os.W_OK):
        return CheckResult(
            name,
            False,
            f"{path} exists but is not readable and writable",
            f"chown {path} to the user running erpwatch",
        )
    problem = _database_problem(path)
    if problem is not None:
        return CheckResult(
            name, False, f"{path} {problem}", f"move it away, or {fix[0].lower()}{fix[1:]}"
        )
    return CheckResult(name, True, str(path))


def _database_problem(path: Path) -> str | None:
    """None when ``path`` (an existing file) can serve as erpwatch's event database."""
    try:
        with path.open("rb") as file:
            header = file.read(len(SQLITE_MAGIC))
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not header:
        return None  # an empty file: SQLite makes a database of it
    if header != SQLITE_MAGIC:
        return "is not an SQLite database (it holds something else)"
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error as exc:
        return f"cannot be opened ({exc})"
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if tables and "events" not in tables:
            shown = ", ".join(sorted(tables)[:5])
            return f"is an SQLite database of something else (tables: {shown})"
        version = 0
        if "meta" in tables:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
    except (sqlite3.Error, ValueError) as exc:
        return f"cannot be read as a database ({exc})"
    finally:
        conn.close()
    if version > SCHEMA_VERSION:
        return f"has schema version {version}, newer than this erpwatch's ({SCHEMA_VERSION})"
    return None


# --- health ports -----------------------------------------------------------------------


def health_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname or "127.0.0.1", port


def _addresses(host: str, port: int) -> list[tuple[int, str]]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys((family, str(addr[0])) for family, _, _, _, addr in infos))


def port_in_use(host: str, port: int) -> bool | None:
    """True when something listens on ``host:port`` (any of its addresses), False when it is
    free, None when ``host`` is not an address of this machine (nothing to check)."""
    local = False
    for family, address in _addresses(host, port):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            if exc.errno == errno.EAFNOSUPPORT:  # e.g. ::1 on a host without IPv6
                continue
            raise
        with sock:
            # SO_REUSEADDR: a TIME_WAIT leftover is no obstacle; a listener still is (Linux).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
                if exc.errno == errno.EADDRNOTAVAIL:
                    continue
                raise
            local = True
    return False if local else None


def _matches(listen_ip: str, wanted: set[str]) -> bool:
    if listen_ip in wanted:
        return True
    try:
        return ipaddress.ip_address(listen_ip).is_unspecified  # 0.0.0.0 / :: hold every address
    except ValueError:
        return False


def find_port_holder(host: str, port: int) -> PortHolder | None:
    """The process listening on ``host:port`` (psutil.net_connections), if any."""
    wanted = {address for _, address in _addresses(host, port)}
    anywhere = any(ipaddress.ip_address(address).is_unspecified for address in wanted)
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
            continue
        if not anywhere and not _matches(conn.laddr.ip, wanted):
            continue  # a wildcard bind collides with a listener on any address
        if conn.pid is None:
            return PortHolder(None)
        try:
            proc = psutil.Process(conn.pid)
            return PortHolder(conn.pid, proc.name(), tuple(proc.cmdline()))
        except psutil.NoSuchProcess:
            continue  # it went away while we looked
        except psutil.AccessDenied:
            return PortHolder(conn.pid)
    return None


def check_port(target: TargetConfig) -> CheckResult:
    assert target.health_url is not None
    host, port = health_address(target.health_url)
    name = f"health port {host}:{port} ({target.name})"
    try:
        in_use = port_in_use(host, port)
    except OSError as exc:
        return CheckResult(name, False, f"cannot check: {exc}", "check the host in the health URL")
    if in_use is None:
        return CheckResult(
            name, True, "not an address of this host; not checked", target=target.name
        )
    if not in_use:
        return CheckResult(name, True, "free", target=target.name)
    holder = find_port_holder(host, port) or PortHolder(None)
    same = holder.pid is not None and same_command(holder, target.argv)
    hint = (
        "a leftover of the same command: end it with `erpwatch check --kill-stale`"
        if same
        else "stop that process or move the target to another port"
    )
    return CheckResult(
        name, False, f"in use by {holder.describe()}", hint, target=target.name, holder=holder
    )


def status_address(settings: Settings) -> tuple[str, int]:
    """Where the status server listens (an empty host is the wildcard)."""
    return settings.status_host or "0.0.0.0", settings.status_port


def check_status_server(settings: Settings) -> CheckResult:
    """What `erpwatch run` refuses on before its status server listens: a non-loopback
    address without a token, a port held by another process, an address not of this host."""
    host, port = status_address(settings)
    name = f"status server {host}:{port}"
    problem = status_bind_problem(settings)
    if problem is not None:
        return CheckResult(name, False, problem)
    if port == 0:
        return CheckResult(name, True, "any free port")
    try:
        in_use = port_in_use(host, port)
    except OSError as exc:
        return CheckResult(
            name,
            False,
            f"cannot listen there: {exc.strerror or exc}",
            f"choose another {ENV_PREFIX}STATUS_HOST/{ENV_PREFIX}STATUS_PORT",
        )
    if in_use is None:
        return CheckResult(
            name,
            False,
            f"{host} is not an address of this host",
            f"fix {ENV_PREFIX}STATUS_HOST (e.g. 127.0.0.1)",
        )
    if not in_use:
        return CheckResult(name, True, "free")
    holder = find_port_holder(host, port) or PortHolder(None)
    return CheckResult(
        name,
        False,
        f"port {port} is in use by {holder.describe()}",
        f"stop that process or set {ENV_PREFIX}STATUS_PORT to a free port (0 = any)",
        holder=holder,
    )


def _real_executable(program: str) -> str | None:
    found = program if os.sep in program else shutil.which(program)
    return os.path.realpath(found) if found else None


def same_command(holder: PortHolder, argv: Sequence[str]) -> bool:
    """True when the holder runs exactly ``argv`` (the program may be named via PATH).

    A console script (``uvicorn …``, a ``#!`` script) shows up as its interpreter line:
    ``/venv/bin/python3 /venv/bin/uvicorn …``; that is the same command too."""
    cmdline = list(holder.cmdline)
    mine = _real_executable(argv[0])
    if cmdline and len(cmdline) == len(argv) and cmdline[1:] == list(argv[1:]):
        if cmdline[0] == argv[0]:
            return True
        return mine is not None and mine == _real_executable(cmdline[0])
    if len(cmdline) == len(argv) + 1 and cmdline[2:] == list(argv[1:]) and mine is not None:
        script = _real_executable(cmdline[1])
        interpreter = _shebang(mine)
        return (
            script == mine
            and interpreter is not None
            and _real_executable(cmdline[0]) == _real_executable(interpreter)
        )
    return False


def _shebang(path: str) -> str | None:
    """The interpreter a ``#!`` script names (``#!/usr/bin/env python3`` → python3)."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    if not words:
        return None
    if os.path.basename(words[0]) == "env" and len(words) > 1:
        return words[1]
    return words[0]


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    """True once ``proc`` has exited. A zombie counts as gone (it holds no port); our own
    child is reaped. Not ``proc.wait``: for a non-child it waits for the zombie to vanish."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                if proc.ppid() == os.getpid():
                    proc.wait(0)
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def end_stale(holder: PortHolder, argv: Sequence[str], grace: float) -> CheckResult:
    """End a leftover of the target's own command: SIGTERM, then SIGKILL after ``grace``."""
    name = f"stale process {holder.pid}"
    if holder.pid is None or holder.pid == os.getpid():
        return CheckResult(name, False, "cannot end it", "stop it by hand")
    if not same_command(holder, argv):
        return CheckResult(
            name,
            False,
            f"not ended: its command differs from the target's ({_one_line(argv)})",
            "stop it by hand if it is really stale",
        )
    try:
        proc = psutil.Process(holder.pid)
        if tuple(proc.cmdline()) != holder.cmdline:  # pid reused since we looked
            return CheckResult(name, False, "not ended: the process changed", "run check again")
        # Its descendants go too (a grandchild would keep the port or do the work).
        tree = proc.children(recursive=True)
        for child in tree:
            with contextlib.suppress(psutil.Error):
                child.terminate()
        proc.terminate()
        if _wait_gone(proc, grace):
            how = "ended with SIGTERM"
        else:
            proc.kill()
            if not _wait_gone(proc, grace):
                return CheckResult(
                    name, False, "still running after SIGKILL", "stop it by hand (as root)"
                )
            how = f"killed with SIGKILL after {grace:g}s"
        for child in tree:
            with contextlib.suppress(psutil.Error):
                if child.is_running():
                    child.kill()
        if tree:
            how += f", with {len(tree)} descendant(s)"
    except psutil.NoSuchProcess:
        how = "already gone"
    except psutil.AccessDenied as exc:
        return CheckResult(name, False, f"could not end it: {exc}", "stop it by hand (as root)")
    return CheckResult(name, True, how)


# --- SMTP -----------------------------------------------------------------------------------


_DEFAULT_SMTP_PORTS = {"none": 25, "starttls": 587, "tls": 465}


async def smtp_check(settings: Settings) -> CheckResult:
    """Connect (TLS/STARTTLS as configured) and log in when a username is set."""
    import aiosmtplib  # only `check` with SMTP configured pays for it (and for ssl)

    assert settings.smtp_host is not None
    port = settings.smtp_port or _DEFAULT_SMTP_PORTS[settings.smtp_security]
    name = f"smtp {settings.smtp_host}:{port}"
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
    client = aiosmtplib.SMTP(
        hostname=settings.smtp_host,
        port=port,
        use_tls=settings.smtp_security == "tls",
        start_tls=settings.smtp_security == "starttls",
        cert_bundle=str(settings.smtp_ca_file) if settings.smtp_ca_file else None,
        timeout=settings.smtp_timeout,
    )
    step = "connect"
    try:
        await client.connect()
        if settings.smtp_username:
            step = "login"
            await client.login(settings.smtp_username, password)
        step = "quit"
        await client.quit()
    except aiosmtplib.SMTPAuthenticationError as exc:
        return CheckResult(
            name,
            False,
            _hide(f"login refused for {settings.smtp_username!r}: {exc.message}", password),
            "check ERPWATCH_SMTP_USERNAME / ERPWATCH_SMTP_PASSWORD",
        )
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return CheckResult(
            name,
            False,
            _hide(f"{step} failed: {str(exc) or type(exc).__name__}", password),
            "check ERPWATCH_SMTP_HOST/PORT/SECURITY and that the server is reachable",
        )
    finally:
        if client.is_connected:
            client.close()
    detail = f"logged in as {settings.smtp_username!r}" if settings.smtp_username else "reachable"
    return CheckResult(name, True, detail)


def _hide(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


# --- `erpwatch check` -----------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check the configuration and the environment before running",
        description="Pre-flight checks: configuration, commands, directories, ports, SMTP.",
    )
    parser.add_argument(
        "--kill-stale",
        action="store_true",
        help="end a process holding a health port when it runs the target's own command",
    )
    parser.add_argument(
        "--grace",
        type=grace_seconds,
        default=5.0,
        metavar="SECONDS",
        help="with --kill-stale: wait this long after SIGTERM before SIGKILL (default 5)",
    )
    parser.set_defaults(handler=run_check)


def grace_seconds(text: str) -> float:
    """``--grace``: a finite number of seconds, 0 to `GRACE_MAX_S`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or not 0 <= value <= GRACE_MAX_S:
        raise argparse.ArgumentTypeError(f"expected 0 to {GRACE_MAX_S:g} seconds, not {text!r}")
    return value


def run_check(args: argparse.Namespace) -> int:
    from watchdog.config import load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        failed = CheckResult("configuration", False, str(exc), _CONFIG_HINT)
        print(format_results([failed, *variable_warnings()]))
        return EXIT_CONFIG
    results = collect(settings, kill_stale=args.kill_stale, grace=args.grace)
    results[1:1] = variable_warnings()  # after the configuration line
    print(format_results(results))
    return 0 if passed(results) else EXIT_FAILED


_CONFIG_HINT = "fix the ERPWATCH_* variable named above (environment or .env)"


def collect(
    settings: Settings, *, kill_stale: bool = False, grace: float = 5.0
) -> list[CheckResult]:
    """All checks, in display order; with ``kill_stale`` a held port whose holder runs the
    target's own command is freed and checked again."""
    results: list[CheckResult] = []
    targets = {target.name: target for target in settings.targets_resolved()}
    for result in fast_checks(settings):
        if not (kill_stale and result.holder is not None and result.target in targets):
            results.append(result)
            continue
        target = targets[result.target]
        ended = end_stale(result.holder, target.argv, grace)
        results += [dataclasses.replace(result, superseded=ended.ok), ended]
        if ended.ok:
            results.append(check_port(target))
    if settings.smtp_host:
        results.append(asyncio.run(smtp_check(settings)))
    return results
