"""The daemon's settings, read and validated by a short-lived child process.

Why: validating with pydantic-settings loads pydantic and pydantic-core, ~11 MiB of the RSS of
a process that otherwise needs ~40, and the daemon would hold them for months to run the
validation again on a reload. So ``erpwatch run`` and its reloads start
``python -m watchdog.config_reader``, which runs `watchdog.config.load_settings` (same
environment, same working directory, so the same ``.env`` and the same precedence) and
answers with the validated `Settings`, pickled: plain dataclasses of stdlib values.

Faults: a configuration error is the child's message on stderr (exit 2), raised here as
`ConfigError`; a child that cannot start (EMFILE, ENOMEM), crashes, hangs past
`READ_TIMEOUT_S` or answers with something else is a `ConfigError` too: at start-up erpwatch
says why it does not start, on a reload it keeps the configuration it runs with. The answer
is unpickled with only the classes a `Settings` is made of; one made by other code (erpwatch
upgraded on disk while running) is refused with a message saying to restart erpwatch.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path, PosixPath
from typing import Any

from watchdog.errors import ConfigError
from watchdog.settings import Secret, Settings, TargetConfig

READ_TIMEOUT_S = 120.0  # importing pydantic on a loaded 2-core host takes ~1 s; this is slack
EXIT_CONFIG = 2
_MAX_ANSWER = 4 * 1024 * 1024  # a Settings pickles to a few KiB
_ALLOWED = {
    ("watchdog.settings", "Settings"): Settings,
    ("watchdog.settings", "TargetConfig"): TargetConfig,
    ("watchdog.settings", "Secret"): Secret,
}

# The fields a pickled Settings / TargetConfig must carry: those of this erpwatch's code.
_FIELDS = {
    cls: frozenset(item.name for item in dataclasses.fields(cls))
    for cls in (Settings, TargetConfig)
}


@dataclasses.dataclass(frozen=True)
class Answer:
    settings: Settings
    warnings: list[str]  # `watchdog.config.unknown_variables`


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in {"pathlib", "pathlib._local"} and name == "PosixPath":  # 3.13: _local
            return PosixPath
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in the settings")


def read_settings(overrides: Mapping[str, Any] | None = None) -> Answer:
    """Validate the configuration in a child process; raise `ConfigError` with its message."""
    # -P: the working directory is not on the child's path (a ./watchdog there is not
    # erpwatch); the directory erpwatch itself was imported from comes first instead.
    argv = [sys.executable or "python3", "-P", "-m", "watchdog.config_reader"]
    own = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": own + (os.pathsep + path if path else "")}
    try:
        done = subprocess.run(
            argv,
            input=pickle.dumps(dict(overrides or {})),
            env=env,
            capture_output=True,
            timeout=READ_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(
            f"validating the configuration took over {READ_TIMEOUT_S:g} s: nothing read"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot start the process that validates the configuration: {exc}"
        ) from None
    errors = done.stderr.decode("utf-8", "replace").strip()
    if done.returncode == EXIT_CONFIG and errors:
        raise ConfigError(errors.splitlines()[-1])
    if done.returncode != 0:
        last = errors.splitlines()[-1] if errors else "no message"
        raise ConfigError(
            f"the process that validates the configuration failed (exit {done.returncode}): "
            f"{last[:300]}"
        )
    return _answer(done.stdout)


def _answer(data: bytes) -> Answer:
    try:
        if len(data) > _MAX_ANSWER:
            raise pickle.UnpicklingError("answer too large")
        settings, warnings = _Unpickler(io.BytesIO(data)).load()
        if not isinstance(settings, Settings) or not all(isinstance(w, str) for w in warnings):
            raise pickle.UnpicklingError("not a Settings")
        if vars(settings).keys() != _FIELDS[Settings] or not all(
            isinstance(target, TargetConfig) and vars(target).keys() == _FIELDS[TargetConfig]
            for target in settings.targets
        ):
            raise pickle.UnpicklingError("fields differ")
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(
            "the validated configuration does not fit this erpwatch (was erpwatch upgraded "
            f"while it runs? restart it): {exc}"
        ) from None
    return Answer(settings, list(warnings))


def _child() -> int:
    """In the child: overrides (pickled) on stdin, ``(Settings, warnings)`` on stdout."""
    from watchdog.config import load_settings, unknown_variables

    overrides = pickle.loads(sys.stdin.buffer.read())
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return EXIT_CONFIG
    sys.stdout.buffer.write(pickle.dumps((settings, unknown_variables())))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_child())
