"""One managed child process.

CONTRACT:

    @dataclass(frozen=True)
    class ExitInfo:
        pid: int
        returncode: int | None      # exit status when it exited normally
        signal: str | None          # e.g. "SIGKILL" when killed by a signal
        stderr_tail: tuple[str, ...]
        def describe(self) -> str   # "exit code 3" / "killed by SIGKILL"

    class ManagedProcess:
        def __init__(self, name: str, argv: Sequence[str], *, log_dir: Path,
                     cwd: Path | None = None, env: Mapping[str, str] | None = None,
                     stop_timeout: float = 10.0, stderr_tail_lines: int = 20,
                     log_max_bytes: int = 10 MiB, log_backups: int = 5) -> None
        stdout_path, stderr_path: Path      # log_dir / f"{name}.out.log", f"{name}.err.log"
        pid: int | None; running: bool; started_at: float | None (monotonic)
        async def start(self) -> int
            # no shell; start_new_session=True; stdout/stderr appended to the log files (O_APPEND
            # fds, never pipes); raises ProcessStartError(message) if the executable is missing.
        async def wait(self) -> ExitInfo
            # returns as soon as the child exits (no polling); safe to call from several tasks
        async def stop(self) -> ExitInfo | None
            # snapshot the process tree (psutil children(recursive=True)) first, SIGTERM the
            # process group, wait stop_timeout, SIGKILL the group and every snapshotted
            # descendant still alive (also those that left the group via setsid); never leaves
            # a zombie. None when not running.
        def stderr_tail(self, lines: int | None = None) -> list[str]
        def rotate_logs(self) -> None   # copytruncate when over log_max_bytes (O_APPEND keeps
                                        # the child's writes correct)
"""
