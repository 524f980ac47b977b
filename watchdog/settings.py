"""erpwatch's configuration as validated values: plain frozen dataclasses, no pydantic.

`Settings` is the one declaration of every ``ERPWATCH_*`` setting: its name, type and default,
with markers in ``Annotated[...]`` for what `watchdog.config` checks beyond the type.
`watchdog.config` builds its pydantic-settings schema from these fields, reads and validates
the environment and ``.env``, and returns a `Settings`. The daemon (`erpwatch run`) does that
in a short-lived child process (`watchdog.config_reader`): pydantic-settings and pydantic
(~11 MiB of a ~50 MiB process) then never load in the process that runs for months.

Global values are defaults; ``ERPWATCH_TARGETS__<NAME>__<FIELD>`` overrides them per target.
Validation resolves both into one `TargetConfig` per supervised process (`Settings.targets`).
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from watchdog.paths import DB_FILE_NAME, DEFAULT_LOG_PATH, DEFAULT_STATUS_HOST, DEFAULT_STATUS_PORT
from watchdog.paths import ENV_PREFIX as ENV_PREFIX

# A target's name: it names its log files (LOG_PATH/<name>.out.log), so no '/' and no '..'.
TARGET_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MAX_DURATION_S = 30 * 86400.0  # no duration setting is longer: 30 days
WEBHOOK_TEMPLATES = ("auto", "json", "slack", "teams")  # shipped bodies; auto = by the URL's host


@dataclass(frozen=True)
class Limits:
    """Bounds of a value (pydantic's ``Field`` arguments: ge, gt, le, lt, pattern, ...)."""

    bounds: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, **bounds: Any) -> Limits:
        return cls(tuple(bounds.items()))


@dataclass(frozen=True)
class Rule:
    """A check beyond the type and its bounds; `watchdog.config` holds what each name does."""

    name: str


DURATION = Rule("duration")  # finite, at most MAX_DURATION_S
CSV = Rule("csv")  # a comma-separated list in the environment
HTTP_URL = Rule("http_url")  # an http(s) URL, kept as written (normalised) text
HTTP_URLS = Rule("http_urls")  # each item an http(s) URL
EVENT_KINDS = Rule("event_kinds")  # each item an event kind
HEADERS = Rule("headers")  # a JSON object of header names to values
COMMAND = Rule("command")  # a command line shlex can split
CHILD_ENV = Rule("child_env")  # environment variable names and values
TOKEN = Rule("token")  # what an Authorization header can carry: visible ASCII, no spaces

Seconds = Annotated[float, Limits.of(ge=0), DURATION]
PositiveSeconds = Annotated[float, Limits.of(gt=0), DURATION]
Percent = Annotated[float, Limits.of(gt=0, le=100)]
Megabytes = Annotated[float, Limits.of(gt=0, allow_inf_nan=False)]
Port = Annotated[int, Limits.of(ge=0, le=65535)]
Count = Annotated[int, Limits.of(ge=0)]
HttpUrl = Annotated[str, HTTP_URL]
Command = Annotated[str, COMMAND]
ChildEnv = Annotated[dict[str, str], CHILD_ENV]
CsvList = Annotated[tuple[str, ...], CSV]
SeverityName = Literal["info", "warning", "critical"]


class Secret:
    """A value never shown: ``repr`` and ``str`` give stars (like pydantic's SecretStr)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __getstate__(self) -> str:
        return self._value

    def __setstate__(self, state: str) -> None:
        self._value = state


@dataclass(frozen=True)
class TargetConfig:
    """Everything one `TargetMonitor` needs, globals and overrides merged."""

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


# The global settings a target may override (``ERPWATCH_TARGETS__<NAME>__<FIELD>``), besides
# its command, health URL, working directory, ``after`` and environment.
PER_TARGET_FIELDS = (
    "max_restarts",
    "check_interval",
    "timeout_threshold",
    "restart_window",
    "restart_backoff",
    "restart_backoff_max",
    "stop_timeout",
    "hang_stop_timeout",
    "startup_grace",
    "probe_timeout",
    "degraded_latency",
    "healthy_reset",
    "limit_retry",
    "down_after",
    "rss_limit_mb",
    "restart_on_rss",
)


@dataclass(frozen=True)
class Settings:
    """All of erpwatch's configuration, validated. Field ``x`` is read from ``ERPWATCH_X``;
    ``targets`` is the resolved list (``ERPWATCH_TARGETS__<NAME>__*`` is its input)."""

    # --- single target -------------------------------------------------------------
    command: Command | None = None
    health_url: HttpUrl | None = None
    target_name: Annotated[str, Limits.of(pattern=TARGET_NAME_PATTERN)] = "backend"
    workdir: Path | None = None
    # ERPWATCH_ENV__<VAR>: the single target's extra environment
    env: ChildEnv = field(default_factory=dict)
    targets: tuple[TargetConfig, ...] = ()

    # --- supervision (the seed's parameters keep their names and defaults) -----------
    max_restarts: Count = 5
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
    retention_days: Annotated[float, Limits.of(ge=0)] = 90.0  # 0 = keep events forever
    control_socket: Path | None = None

    # --- logs ----------------------------------------------------------------------------
    log_max_bytes: Annotated[int, Limits.of(ge=1024)] = 10 * 1024 * 1024
    log_backups: Count = 5
    log_format: Literal["text", "json"] = "text"

    # --- resources ---------------------------------------------------------------------
    resource_interval: PositiveSeconds = 10.0
    cpu_threshold: Percent = 90.0
    ram_threshold: Percent = 90.0
    disk_threshold: Percent = 90.0
    resource_hysteresis: Annotated[float, Limits.of(ge=0, lt=50)] = 5.0
    rss_limit_mb: Megabytes | None = None
    restart_on_rss: bool = False

    # --- alerting --------------------------------------------------------------------
    smtp_host: str | None = None
    smtp_port: Port | None = None
    smtp_username: str | None = None
    smtp_password: Secret | None = None
    smtp_security: Literal["none", "starttls", "tls"] = "starttls"
    smtp_ca_file: Path | None = None
    smtp_timeout: PositiveSeconds = 10.0
    alert_from: str = "erpwatch@localhost"
    alert_to: CsvList = ()
    alert_on: Annotated[CsvList, EVENT_KINDS] = (
        "restart-limit-reached",
        "crash-loop",
        "down",
        "alert-failed",
        "watchdog-fault",
    )
    alert_group_wait: Seconds = 10.0
    alert_group_interval: Seconds = 300.0
    alert_recovery_after: Seconds = 60.0
    alert_reminder_interval: Seconds = 4 * 3600.0
    alert_rate_limit: Annotated[int, Limits.of(ge=1)] = 10
    alert_rate_window: PositiveSeconds = 3600.0
    alert_stderr_lines: Annotated[int, Limits.of(ge=0, le=1000)] = 20
    alert_template_dir: Path | None = None
    alert_mail_dir: Path | None = None
    crash_loop_count: Annotated[int, Limits.of(ge=2)] = 3
    status_page_url: HttpUrl | None = None
    email_min_severity: SeverityName = "info"

    # --- other receivers (alerting/receivers.py), all through the same outbox ---------
    webhook_urls: Annotated[CsvList, HTTP_URLS] = ()
    webhook_templates: CsvList = ()  # per URL, in order: json | slack | teams | <file>.j2
    webhook_headers: Annotated[Secret, HEADERS] | None = None  # JSON object of extra headers
    webhook_secret: Secret | None = None  # HMAC-SHA256 key of the signature header
    webhook_timeout: PositiveSeconds = 10.0
    webhook_min_severity: SeverityName = "info"
    alertmanager_url: Annotated[CsvList, HTTP_URLS] = ()
    alertmanager_resend_interval: PositiveSeconds = 60.0
    alertmanager_timeout: PositiveSeconds = 10.0
    alertmanager_min_severity: SeverityName = "info"
    hook_command: Command | None = None
    hook_on: Annotated[CsvList, EVENT_KINDS] = (
        "restart-limit-reached",
        "crash-loop",
        "down",
        "watchdog-fault",
    )
    hook_timeout: PositiveSeconds = 30.0
    hook_min_severity: SeverityName = "info"

    # --- status server -------------------------------------------------------------
    status_enabled: bool = True
    status_host: str = DEFAULT_STATUS_HOST
    status_port: Port = DEFAULT_STATUS_PORT
    status_token: Annotated[Secret, TOKEN] | None = None
    status_cache_ttl: Seconds = 2.0
    status_max_connections: Annotated[int, Limits.of(ge=1, le=10_000)] = 100
    status_allowed_hosts: CsvList = ()

    def targets_resolved(self) -> list[TargetConfig]:
        """One config per target: the single ``COMMAND`` target first, then ``TARGETS__*``."""
        return list(self.targets)

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
