"""Settings from ``ERPWATCH_*`` environment variables and ``.env``, validated up front.

Global values are defaults; ``ERPWATCH_TARGETS__<NAME>__<FIELD>`` overrides them per target.
`Settings.targets_resolved()` turns both into one `TargetConfig` per supervised process.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "ERPWATCH_"

Seconds = Annotated[float, Field(ge=0)]
PositiveSeconds = Annotated[float, Field(gt=0)]
Percent = Annotated[float, Field(gt=0, le=100)]


class ConfigError(Exception):
    """A setting is wrong; the message names the variable and the expected form."""


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CsvList = Annotated[list[str], NoDecode]


class TargetOverrides(BaseModel):
    """Per-target values from ``ERPWATCH_TARGETS__<NAME>__*``; unset fields use the globals."""

    model_config = ConfigDict(extra="forbid")

    command: str | None = None
    health_url: AnyHttpUrl | None = None
    workdir: Path | None = None
    after: CsvList = []
    max_restarts: Annotated[int, Field(ge=0)] | None = None
    check_interval: PositiveSeconds | None = None
    timeout_threshold: Seconds | None = None
    restart_window: PositiveSeconds | None = None
    restart_backoff: Seconds | None = None
    restart_backoff_max: Seconds | None = None
    stop_timeout: Seconds | None = None
    hang_stop_timeout: Seconds | None = None
    startup_grace: Seconds | None = None
    probe_timeout: PositiveSeconds | None = None
    degraded_latency: PositiveSeconds | None = None
    healthy_reset: Seconds | None = None
    limit_retry: Seconds | None = None
    down_after: Seconds | None = None
    rss_limit_mb: Annotated[float, Field(gt=0)] | None = None
    restart_on_rss: bool | None = None

    _split_after = field_validator("after", mode="before")(_split_csv)


class TargetConfig(BaseModel):
    """Everything one `TargetMonitor` needs, globals and overrides merged."""

    model_config = ConfigDict(frozen=True)

    name: str
    argv: tuple[str, ...]
    health_url: str | None
    workdir: Path | None
    after: tuple[str, ...]
    max_restarts: int
    check_interval: float
    timeout_threshold: float
    restart_window: float
    restart_backoff: float
    restart_backoff_max: float
    stop_timeout: float
    hang_stop_timeout: float
    startup_grace: float
    probe_timeout: float
    degraded_latency: float
    healthy_reset: float
    limit_retry: float
    down_after: float
    rss_limit_mb: float | None
    restart_on_rss: bool


_PER_TARGET_FIELDS = tuple(
    name
    for name in TargetOverrides.model_fields
    if name not in {"command", "health_url", "workdir", "after"}
)


class Settings(BaseSettings):
    """All of erpwatch's configuration. Field ``x`` is read from ``ERPWATCH_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="__",
        extra="ignore",
        env_ignore_empty=True,
        validate_default=True,
    )

    # --- single target -------------------------------------------------------------
    command: str | None = None
    health_url: AnyHttpUrl | None = None
    target_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] = "backend"
    workdir: Path | None = None
    targets: dict[str, TargetOverrides] = {}

    # --- supervision (the seed's parameters keep their names and defaults) -----------
    max_restarts: Annotated[int, Field(ge=0)] = 5
    check_interval: PositiveSeconds = 15.0
    timeout_threshold: Seconds = 45.0
    log_path: Path = Path("watchdog_logs")
    debug: bool = False
    restart_window: PositiveSeconds = 600.0
    restart_backoff: Seconds = 1.0
    restart_backoff_max: Seconds = 60.0
    stop_timeout: Seconds = 10.0
    hang_stop_timeout: Seconds = 3.0
    startup_grace: Seconds = 30.0
    probe_timeout: PositiveSeconds = 5.0
    degraded_latency: PositiveSeconds = 2.0
    healthy_reset: Seconds = 300.0
    limit_retry: Seconds = 900.0
    down_after: Seconds = 60.0
    db_path: Path | None = None

    # --- logs ----------------------------------------------------------------------------
    log_max_bytes: Annotated[int, Field(ge=1024)] = 10 * 1024 * 1024
    log_backups: Annotated[int, Field(ge=0)] = 5
    log_format: Literal["text", "json"] = "text"

    # --- resources ---------------------------------------------------------------------
    resource_interval: PositiveSeconds = 10.0
    cpu_threshold: Percent = 90.0
    ram_threshold: Percent = 90.0
    disk_threshold: Percent = 90.0
    resource_hysteresis: Annotated[float, Field(ge=0, lt=50)] = 5.0
    rss_limit_mb: Annotated[float, Field(gt=0)] | None = None
    restart_on_rss: bool = False

    # --- alerting --------------------------------------------------------------------
    smtp_host: str | None = None
    smtp_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: Literal["none", "starttls", "tls"] = "starttls"
    smtp_ca_file: Path | None = None
    smtp_timeout: PositiveSeconds = 10.0
    alert_from: str = "erpwatch@localhost"
    alert_to: CsvList = []
    alert_on: CsvList = [
        "restart-limit-reached",
        "crash-loop",
        "down",
        "alert-failed",
        "watchdog-fault",
    ]
    alert_group_wait: Seconds = 10.0
    alert_recovery_after: Seconds = 60.0
    alert_reminder_interval: Seconds = 4 * 3600.0
    alert_rate_limit: Annotated[int, Field(ge=1)] = 10
    alert_rate_window: PositiveSeconds = 3600.0
    alert_stderr_lines: Annotated[int, Field(ge=0, le=1000)] = 20
    alert_template_dir: Path | None = None
    alert_mail_dir: Path | None = None
    crash_loop_count: Annotated[int, Field(ge=2)] = 3
    status_page_url: AnyHttpUrl | None = None

    # --- status server -------------------------------------------------------------
    status_enabled: bool = True
    status_host: str = "127.0.0.1"
    status_port: Annotated[int, Field(ge=0, le=65535)] = 8765
    status_token: SecretStr | None = None
    status_cache_ttl: Seconds = 2.0

    _split_lists = field_validator("alert_to", "alert_on", mode="before")(_split_csv)

    @field_validator("command")
    @classmethod
    def _command_parses(cls, value: str | None) -> str | None:
        if value is not None:
            _split_command(value)
        return value

    @model_validator(mode="after")
    def _check_targets(self) -> Settings:
        for name, target in self.targets.items():
            if target.command is not None:
                _split_command(target.command)
            for dep in target.after:
                if dep.lower() not in self.targets and dep.lower() != self.target_name.lower():
                    raise ValueError(f"targets.{name}.after names unknown target {dep!r}")
        return self

    @property
    def event_db_path(self) -> Path:
        return self.db_path if self.db_path is not None else self.log_path / "erpwatch.db"

    def targets_resolved(self) -> list[TargetConfig]:
        """One config per target: the single ``COMMAND`` target first, then ``TARGETS__*``."""
        resolved: list[TargetConfig] = []
        targets = dict(self.targets)
        if self.command:
            single = TargetOverrides(
                command=self.command, health_url=self.health_url, workdir=self.workdir
            )
            extra = targets.pop(self.target_name.lower(), None)
            if extra is not None:
                single = single.model_copy(
                    update={key: getattr(extra, key) for key in extra.model_fields_set}
                )
            resolved.append(self._target(self.target_name, single))
        for name, overrides in sorted(targets.items()):
            if not overrides.command:
                raise ConfigError(
                    f"{ENV_PREFIX}TARGETS__{name.upper()}__COMMAND: missing; expected the "
                    "command line of the process to supervise"
                )
            resolved.append(self._target(name, overrides))
        return resolved

    def _target(self, name: str, overrides: TargetOverrides) -> TargetConfig:
        assert overrides.command is not None
        values: dict[str, Any] = {
            field: value
            if (value := getattr(overrides, field)) is not None
            else getattr(self, field)
            for field in _PER_TARGET_FIELDS
        }
        return TargetConfig(
            name=name,
            argv=tuple(_split_command(overrides.command)),
            health_url=str(overrides.health_url) if overrides.health_url else None,
            workdir=overrides.workdir,
            after=tuple(dep.lower() for dep in overrides.after),
            **values,
        )


def _split_command(command: str) -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ValueError(f"cannot split command line ({exc})") from None
    if not argv:
        raise ValueError("empty command line")
    return argv


_EXPECTED = {
    "int_parsing": "an integer",
    "float_parsing": "a number of seconds (fractions allowed, e.g. 0.05)",
    "bool_parsing": "true or false",
    "url_parsing": "an http(s) URL such as http://127.0.0.1:8000/health",
    "url_scheme": "an http(s) URL such as http://127.0.0.1:8000/health",
    "greater_than_equal": "a number >= {ge}",
    "greater_than": "a number > {gt}",
    "less_than_equal": "a number <= {le}",
    "less_than": "a number < {lt}",
    "literal_error": "one of {expected}",
    "string_pattern_mismatch": "letters, digits, '.', '_' or '-' (at most 64)",
    "extra_forbidden": "no such setting",
    "value_error": "a valid value: {error}",
}


def _variable_name(loc: tuple[int | str, ...]) -> str:
    parts = [str(part) for part in loc if not isinstance(part, int)]
    return ENV_PREFIX + "__".join(part.upper() for part in parts)


def describe_validation_error(exc: ValidationError) -> str:
    """One line per wrong value, naming the ``ERPWATCH_*`` variable and the expected form."""
    lines = []
    for err in exc.errors():
        loc = err.get("loc", ())
        ctx = err.get("ctx") or {}
        template = _EXPECTED.get(err["type"])
        if template is None:
            expected = str(ctx.get("error", err["msg"]))
        else:
            try:
                expected = template.format(**ctx)
            except (KeyError, IndexError):
                expected = template
        name = _variable_name(tuple(loc)) if loc else f"{ENV_PREFIX}TARGETS"
        got = err.get("input")
        shown = "" if isinstance(got, dict) or got is None else f" (got {str(got)[:60]!r})"
        if not loc:
            lines.append(f"{name}: {expected.removeprefix('Value error, ')}")
        else:
            lines.append(f"{name}: expected {expected}{shown}")
    return "; ".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Read and validate settings; raise `ConfigError` with a message for people."""
    try:
        settings = Settings(**overrides)
        settings.targets_resolved()
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return settings
