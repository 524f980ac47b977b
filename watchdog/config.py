"""Settings from ``ERPWATCH_*`` environment variables and ``.env``, validated up front.

Global values are defaults; ``ERPWATCH_TARGETS__<NAME>__<FIELD>`` overrides them per target.
`Settings.targets_resolved()` turns both into one `TargetConfig` per supervised process.

Boundaries: every duration is a finite number of seconds, at most `MAX_DURATION_S` (30 days;
``inf``/``1e309``/``nan`` are refused, naming the variable). `unknown_variables` names every
``ERPWATCH_*`` variable that is not a setting (a typo would otherwise be ignored silently),
with the closest known name. Extra environment for a child: ``ERPWATCH_ENV__<VAR>`` (single
target) and ``ERPWATCH_TARGETS__<NAME>__ENV__<VAR>``; ``<VAR>`` keeps the case it is written
in (pydantic-settings lower-cases dict keys: `Settings` restores them from the raw names).
"""

from __future__ import annotations

import ipaddress
import math
import os
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from watchdog.errors import ConfigError as ConfigError
from watchdog.paths import DB_FILE_NAME, DEFAULT_LOG_PATH, DEFAULT_STATUS_HOST, DEFAULT_STATUS_PORT
from watchdog.paths import ENV_PREFIX as ENV_PREFIX  # paths.py: the one precedence
from watchdog.paths import control_socket_path as control_socket_path
from watchdog.paths import env_file as env_file
from watchdog.paths import raw_setting as raw_setting

MAX_DURATION_S = 30 * 86400.0  # no duration setting is longer: 30 days
# Set by erpwatch in each child's environment (`watchdog.reaper.MARKER`), not a setting.
_OWN_MARKERS = frozenset({"ERPWATCH_TARGET", "ERPWATCH_ENV_FILE"})


def _finite_duration(value: Any) -> Any:
    """Before float parsing: a number must be finite and at most `MAX_DURATION_S` (a hung
    backend probed with PROBE_TIMEOUT=inf would look healthy forever). What is not a number
    is left to pydantic, which then says "a number of seconds"."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return value
    try:
        number = float(value)
    except ValueError:
        return value
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not math.isfinite(number) or number > MAX_DURATION_S:
        raise PydanticCustomError(
            "duration_range",
            "a finite number of seconds, at most {max} (30 days)",
            {"max": int(MAX_DURATION_S)},
        )
    return value


Seconds = Annotated[float, Field(ge=0), BeforeValidator(_finite_duration)]
PositiveSeconds = Annotated[float, Field(gt=0), BeforeValidator(_finite_duration)]
Percent = Annotated[float, Field(gt=0, le=100)]
SeverityName = Literal["info", "warning", "critical"]
WEBHOOK_TEMPLATES = ("auto", "json", "slack", "teams")  # shipped bodies; auto = by the URL's host


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CsvList = Annotated[list[str], NoDecode]


def _check_child_env(env: dict[str, str]) -> dict[str, str]:
    for name, value in env.items():
        if not name or "=" in name or "\0" in name:
            raise ValueError(f"{name!r} is not an environment variable name")
        if "\0" in value:
            raise ValueError(f"the value of {name} contains a NUL byte")
    return env


class TargetOverrides(BaseModel):
    """Per-target values from ``ERPWATCH_TARGETS__<NAME>__*``; unset fields use the globals."""

    model_config = ConfigDict(extra="forbid")

    command: str | None = None
    health_url: AnyHttpUrl | None = None
    workdir: Path | None = None
    after: CsvList = []
    env: dict[str, str] = {}
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
    rss_limit_mb: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    restart_on_rss: bool | None = None

    _split_after = field_validator("after", mode="before")(_split_csv)
    _check_env = field_validator("env")(_check_child_env)


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
    # Extra environment of the child, over erpwatch's own: (name, value) sorted by name.
    env: tuple[tuple[str, str], ...] = ()


_PER_TARGET_FIELDS = tuple(
    name
    for name in TargetOverrides.model_fields
    if name not in {"command", "health_url", "workdir", "after", "env"}
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
    env: dict[str, str] = {}  # ERPWATCH_ENV__<VAR>: the single target's extra environment
    targets: dict[str, TargetOverrides] = {}

    # --- supervision (the seed's parameters keep their names and defaults) -----------
    max_restarts: Annotated[int, Field(ge=0)] = 5
    check_interval: PositiveSeconds = 15.0
    timeout_threshold: Seconds = 45.0
    log_path: Path = Path(DEFAULT_LOG_PATH)
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
    retention_days: Annotated[float, Field(ge=0)] = 90.0  # 0 = keep events forever
    control_socket: Path | None = None

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
    rss_limit_mb: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
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
    alert_group_interval: Seconds = 300.0
    alert_recovery_after: Seconds = 60.0
    alert_reminder_interval: Seconds = 4 * 3600.0
    alert_rate_limit: Annotated[int, Field(ge=1)] = 10
    alert_rate_window: PositiveSeconds = 3600.0
    alert_stderr_lines: Annotated[int, Field(ge=0, le=1000)] = 20
    alert_template_dir: Path | None = None
    alert_mail_dir: Path | None = None
    crash_loop_count: Annotated[int, Field(ge=2)] = 3
    status_page_url: AnyHttpUrl | None = None
    email_min_severity: SeverityName = "info"

    # --- other receivers (alerting/receivers.py), all through the same outbox ---------
    webhook_urls: CsvList = []
    webhook_templates: CsvList = []  # per URL, in order: json | slack | teams | <file>.j2
    webhook_headers: SecretStr | None = None  # a JSON object of extra request headers
    webhook_secret: SecretStr | None = None  # HMAC-SHA256 key of the signature header
    webhook_timeout: PositiveSeconds = 10.0
    webhook_min_severity: SeverityName = "info"
    alertmanager_url: CsvList = []
    alertmanager_resend_interval: PositiveSeconds = 60.0
    alertmanager_timeout: PositiveSeconds = 10.0
    alertmanager_min_severity: SeverityName = "info"
    hook_command: str | None = None
    hook_on: CsvList = ["restart-limit-reached", "crash-loop", "down", "watchdog-fault"]
    hook_timeout: PositiveSeconds = 30.0
    hook_min_severity: SeverityName = "info"

    # --- status server -------------------------------------------------------------
    status_enabled: bool = True
    status_host: str = DEFAULT_STATUS_HOST
    status_port: Annotated[int, Field(ge=0, le=65535)] = DEFAULT_STATUS_PORT
    status_token: SecretStr | None = None
    status_cache_ttl: Seconds = 2.0
    status_max_connections: Annotated[int, Field(ge=1, le=10_000)] = 100
    status_allowed_hosts: CsvList = []

    _split_lists = field_validator(
        "alert_to",
        "alert_on",
        "status_allowed_hosts",
        "webhook_urls",
        "webhook_templates",
        "alertmanager_url",
        "hook_on",
        mode="before",
    )(_split_csv)
    _check_env = field_validator("env")(_check_child_env)

    @field_validator("webhook_urls", "alertmanager_url")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            scheme, _, rest = url.partition("://")
            if scheme.lower() not in {"http", "https"} or not rest.split("/")[0]:
                raise ValueError(
                    f"{url_shown(url)!r} is not an http(s) URL (comma-separated list expected)"
                )
        return urls

    @field_validator("alert_on", "hook_on")
    @classmethod
    def _event_kinds(cls, kinds: list[str]) -> list[str]:
        from watchdog.events import Kind

        known = {kind.value for kind in Kind}
        for kind in kinds:
            if kind not in known:
                close = _close_match(kind, sorted(known))
                hint = f" (did you mean {close!r}?)" if close else ""
                raise ValueError(
                    f"{kind!r} is not an event kind{hint}; expected a comma-separated list of "
                    "kinds such as down,crash-loop"
                )
        return kinds

    @field_validator("webhook_headers")
    @classmethod
    def _headers_object(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_headers(value.get_secret_value())
        return value

    @field_validator("command", "hook_command")
    @classmethod
    def _command_parses(cls, value: str | None) -> str | None:
        if value is not None:
            split_command(value)
        return value

    @model_validator(mode="after")
    def _restore_env_case(self) -> Settings:
        """pydantic-settings lower-cases the ``<VAR>`` of ``ERPWATCH_ENV__<VAR>``: give each
        key back the spelling of its raw name (the environment's before ``.env``'s)."""
        single: dict[str, str] = {}
        per_target: dict[tuple[str, str], str] = {}
        for raw in _raw_names([env_file()]):
            parts = raw.split("__")
            head = parts[0].upper()
            if head == f"{ENV_PREFIX}ENV" and len(parts) == 2 and parts[1]:
                single.setdefault(parts[1].lower(), parts[1])
            elif (
                head == f"{ENV_PREFIX}TARGETS"
                and len(parts) == 4
                and parts[2].upper() == "ENV"
                and parts[3]
            ):
                per_target.setdefault((parts[1].lower(), parts[3].lower()), parts[3])
        if single:
            self.env = {single.get(key, key): value for key, value in self.env.items()}
        if per_target:
            for name, target in self.targets.items():
                target.env = {
                    per_target.get((name.lower(), key), key): value
                    for key, value in target.env.items()
                }
        return self

    @model_validator(mode="after")
    def _check_webhook_templates(self) -> Settings:
        if len(self.webhook_templates) > len(self.webhook_urls):
            raise ValueError(
                f"{ENV_PREFIX}WEBHOOK_TEMPLATES: {len(self.webhook_templates)} template(s) for "
                f"{len(self.webhook_urls)} URL(s) in {ENV_PREFIX}WEBHOOK_URLS; expected at most "
                "one per URL, in the same order"
            )
        for name in self.webhook_templates:
            if name not in WEBHOOK_TEMPLATES and not name.endswith(".j2"):
                raise ValueError(
                    f"{ENV_PREFIX}WEBHOOK_TEMPLATES: {name!r} is neither one of "
                    f"{', '.join(WEBHOOK_TEMPLATES)} nor a template file ending in .j2"
                )
        return self

    @model_validator(mode="after")
    def _check_targets(self) -> Settings:
        for name, target in self.targets.items():
            if target.command is not None:
                split_command(target.command)
            for dep in target.after:
                if dep.lower() not in self.targets and dep.lower() != self.target_name.lower():
                    raise ValueError(f"targets.{name}.after names unknown target {dep!r}")
        return self

    def secret_values(self) -> list[str]:
        """Every secret a log line must never show: passwords, tokens, signing keys, header
        values, and webhook URLs with their paths (a Slack or Teams URL is its token)."""
        found = [
            secret.get_secret_value()
            for secret in (self.smtp_password, self.status_token, self.webhook_secret)
            if secret is not None
        ]
        if self.webhook_headers is not None:
            found += parse_headers(self.webhook_headers.get_secret_value()).values()
        for url in self.webhook_urls:
            found += url_secrets(url)
        found += [urlsplit(url).password or "" for url in self.alertmanager_url]
        return [value for value in found if len(value) >= 4]

    @property
    def event_db_path(self) -> Path:
        return self.db_path if self.db_path is not None else self.log_path / DB_FILE_NAME

    @property
    def instance_id(self) -> str:
        """Tells this erpwatch's children from another's on the same host (by its store)."""
        import hashlib

        path = str(self.event_db_path.resolve())
        return hashlib.sha256(path.encode()).hexdigest()[:12]

    @property
    def control_socket_path(self) -> Path:
        if self.control_socket is not None:
            return self.control_socket
        return self.log_path / "erpwatch.sock"

    def targets_resolved(self) -> list[TargetConfig]:
        """One config per target: the single ``COMMAND`` target first, then ``TARGETS__*``."""
        resolved: list[TargetConfig] = []
        targets = dict(self.targets)
        if self.command:
            single = TargetOverrides(
                command=self.command,
                health_url=self.health_url,
                workdir=self.workdir,
                env=self.env,
            )
            extra = targets.pop(self.target_name.lower(), None)
            if extra is not None:
                update = {key: getattr(extra, key) for key in extra.model_fields_set}
                if "env" in update:  # TARGETS__<NAME>__ENV__<VAR> adds to ENV__<VAR>
                    update["env"] = {**self.env, **extra.env}
                single = single.model_copy(update=update)
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
            argv=tuple(split_command(overrides.command)),
            health_url=str(overrides.health_url) if overrides.health_url else None,
            workdir=overrides.workdir,
            after=tuple(dep.lower() for dep in overrides.after),
            env=tuple(sorted(overrides.env.items())),
            **values,
        )


def url_host(url: str) -> str:
    """``host[:port]`` of a URL as written: never its user info, path, query or fragment."""
    return urlsplit(url).netloc.rsplit("@", 1)[-1]


def _after_host(url: str) -> str:
    """What follows ``scheme://netloc``: path, query and fragment as written."""
    return url.partition("://")[2][len(urlsplit(url).netloc) :]


def url_secrets(url: str) -> list[str]:
    """What of a URL must never be shown: the whole, what follows the host (a Slack or
    Teams URL's path is its token, a key may sit in the query) and a password in it."""
    parts = urlsplit(url)
    after = _after_host(url)
    rest = url.partition("://")[2]
    found = [url, rest, after, parts.path, parts.query] if after.strip("/") else []
    found.append(parts.password or "")
    return [value for value in found if len(value) >= 4 and value.strip("/")]


def url_shown(url: str) -> str:
    """A URL as it may be shown: scheme and host only (a webhook's path is its secret)."""
    shown = f"{url.partition('://')[0]}://{url_host(url)}"
    return f"{shown}/…" if _after_host(url).strip("/") else shown


def parse_headers(text: str) -> dict[str, str]:
    """``ERPWATCH_WEBHOOK_HEADERS``: a JSON object of header names to string values."""
    import json

    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and "\n" not in v and "\r" not in v
        for k, v in data.items()
    ):
        raise ValueError('a JSON object of header names to values, e.g. {"X-Token": "…"}')
    return data


def split_command(command: str) -> list[str]:
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
    "finite_number": "a finite number",
    "duration_range": "a finite number of seconds, at most {max} (30 days)",
    "string_type": "a single value, not nested (a name cannot contain '__')",
}


# Settings whose values are never echoed in an error (a webhook URL's path is its token).
_SECRET_FIELDS = frozenset(
    {"smtp_password", "status_token", "webhook_urls", "webhook_headers", "webhook_secret"}
)


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
        if err["type"] == "extra_forbidden":
            closest = _closest(name)
            hint = f"; did you mean {closest}?" if closest else ""
            lines.append(f"{name}: not a known variable{hint}")
            continue
        got = err.get("input")
        secret = bool(loc) and str(loc[0]) in _SECRET_FIELDS
        hidden = secret or isinstance(got, dict) or got is None
        shown = "" if hidden else f" (got {str(got)[:60]!r})"
        if not loc:  # a model validator: its message may name its variables itself
            message = str(ctx.get("error", err["msg"])).removeprefix("Value error, ")
            lines.append(message if message.startswith(ENV_PREFIX) else f"{name}: {message}")
        else:
            lines.append(f"{name}: expected {expected}{shown}")
    return "; ".join(lines)


# --- the raw variable names: case of ENV__<VAR>, unknown names ------------------------------


def _raw_names(env_files: Iterable[Path], environ: Mapping[str, str] | None = None) -> list[str]:
    """Every ``ERPWATCH_*`` name as written: the environment's first, then each file's."""
    environ = os.environ if environ is None else environ
    names = [name for name in environ if name.upper().startswith(ENV_PREFIX)]
    for path in env_files:
        if path.is_file():
            from dotenv import dotenv_values  # python-dotenv: pydantic-settings' own parser

            names += [
                name
                for name in dotenv_values(path, encoding="utf-8")
                if name.upper().startswith(ENV_PREFIX)
            ]
    return names


def _flat_names() -> list[str]:
    return [f"{ENV_PREFIX}{field.upper()}" for field in Settings.model_fields]


def _is_known(name: str) -> bool:
    parts = name.upper().split("__")
    if len(parts) == 1:
        return name.upper() in _flat_names() or name.upper() in _OWN_MARKERS
    if parts[0] == f"{ENV_PREFIX}ENV":
        return len(parts) == 2
    if parts[0] == f"{ENV_PREFIX}TARGETS" and len(parts) >= 3 and parts[1]:
        field = parts[2].lower()
        if field == "env":
            return len(parts) in (3, 4)  # ENV as JSON, or ENV__<VAR>
        return len(parts) == 3 and field in TargetOverrides.model_fields
    return False


def _closest(name: str) -> str | None:
    """The known name closest to ``name``, compared without the prefix."""
    upper = name.upper()
    parts = upper.split("__")
    candidates = _flat_names()
    if len(parts) >= 2:
        candidates.append(f"{ENV_PREFIX}ENV__" + "__".join(parts[1:]))
    if len(parts) >= 3:
        rest = "__".join(parts[3:])
        for field in TargetOverrides.model_fields:
            form = f"{ENV_PREFIX}TARGETS__{parts[1]}__{field.upper()}"
            candidates.append(f"{form}__{rest}" if field == "env" and rest else form)
    short = {candidate[len(ENV_PREFIX) :]: candidate for candidate in candidates}
    match = _close_match(upper[len(ENV_PREFIX) :], list(short))
    return short[match] if match else None


def _close_match(word: str, choices: list[str]) -> str | None:
    """The choice closest to ``word``, if any is close. difflib is imported here, on the
    error path only: a valid configuration never loads it."""
    import difflib

    match = difflib.get_close_matches(word, choices, n=1)
    return match[0] if match else None


def unknown_variables(
    environ: Mapping[str, str] | None = None, env_files: Iterable[Path] | None = None
) -> list[str]:
    """One warning per ``ERPWATCH_*`` name (environment or ``.env``) that is no setting:
    pydantic-settings ignores it, so a typo would go unnoticed. Never an error."""
    if env_files is None:
        env_files = [env_file()]
    warnings: list[str] = []
    seen: set[str] = set()
    for name in _raw_names(env_files, environ):
        if name.upper() in seen or _is_known(name):
            continue
        seen.add(name.upper())
        closest = _closest(name)
        hint = f"; did you mean {closest}?" if closest else " (ignored)"
        warnings.append(f"{name} is not a known variable{hint}")
    return warnings


# --- the status server's bind policy ------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def status_bind_problem(settings: Settings) -> str | None:
    """Why the status server must not listen where configured (a non-loopback address
    without a token), or None."""
    token = settings.status_token.get_secret_value() if settings.status_token else ""
    if not settings.status_enabled or token or is_loopback(settings.status_host):
        return None
    return (
        f"{ENV_PREFIX}STATUS_HOST={settings.status_host!r} is not a loopback address: set "
        f"{ENV_PREFIX}STATUS_TOKEN to serve the status API there, or use 127.0.0.1 "
        f"(or {ENV_PREFIX}STATUS_ENABLED=false)"
    )


def load_settings(**overrides: Any) -> Settings:
    """Read and validate settings; raise `ConfigError` with a message for people."""
    try:
        settings = Settings(_env_file=env_file(), **overrides)
        settings.targets_resolved()
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return settings
