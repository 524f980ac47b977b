"""Reading and validating ``ERPWATCH_*`` settings (environment, then ``.env``): pydantic-settings.

The settings are declared once, as the fields of `watchdog.settings.Settings`; this module
builds the pydantic-settings schema from them (each marker of `watchdog.settings` becomes
its pydantic check), validates, and returns a `Settings`: plain values, so that the long-running
daemon never needs pydantic (`watchdog.config_reader` runs this module in a child process).

Boundaries: every duration is a finite number of seconds, at most `MAX_DURATION_S` (30 days;
``inf``/``1e309``/``nan`` are refused, naming the variable). `unknown_variables` names every
``ERPWATCH_*`` variable that is not a setting (a typo would otherwise be ignored silently),
with the closest known name. Extra environment for a child: ``ERPWATCH_ENV__<VAR>`` (single
target) and ``ERPWATCH_TARGETS__<NAME>__ENV__<VAR>``; ``<VAR>`` keeps the case it is written
in (pydantic-settings lower-cases dict keys: `_restore_env_case` gives it back).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    create_model,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from watchdog import settings as plain
from watchdog.errors import ConfigError as ConfigError
from watchdog.paths import ENV_PREFIX as ENV_PREFIX  # paths.py: the one precedence
from watchdog.paths import env_file as env_file
from watchdog.settings import (
    MAX_DURATION_S,
    PER_TARGET_FIELDS,
    TARGET_NAME_PATTERN,
    WEBHOOK_TEMPLATES,
    Secret,
    Settings,
    TargetConfig,
    parse_headers,
    split_command,
    url_shown,
)

# Set by erpwatch in each child's environment (`watchdog.reaper.MARKER`), not a setting.
_OWN_MARKERS = frozenset({"ERPWATCH_TARGET", "ERPWATCH_ENV_FILE"})


# --- the checks behind watchdog.settings' markers ------------------------------------------


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


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _check_child_env(env: dict[str, str]) -> dict[str, str]:
    for name, value in env.items():
        if not name or "=" in name or "\0" in name:
            raise ValueError(f"{name!r} is not an environment variable name")
        if "\0" in value:
            raise ValueError(f"the value of {name} contains a NUL byte")
    return env


def _http_urls(urls: tuple[str, ...]) -> tuple[str, ...]:
    for url in urls:
        scheme, _, rest = url.partition("://")
        if scheme.lower() not in {"http", "https"} or not rest.split("/")[0]:
            raise ValueError(
                f"{url_shown(url)!r} is not an http(s) URL (comma-separated list expected)"
            )
    return urls


def _event_kinds(kinds: tuple[str, ...]) -> tuple[str, ...]:
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


def _headers_object(value: Secret) -> Secret:
    parse_headers(value.get_secret_value())
    return value


def _header_token(value: Secret) -> Secret:
    """A bearer token must survive an HTTP header: a space, a control character or a
    non-ASCII letter would make every request fail as unauthorized (or the client raise)."""
    token = value.get_secret_value()
    if not token or not all("!" <= char <= "~" for char in token):
        raise ValueError(
            "visible ASCII characters only (no spaces, no accents), e.g. the output of "
            "`openssl rand -hex 32`"
        )
    return value


def _command_parses(value: str) -> str:
    split_command(value)
    return value


_RULES: dict[plain.Rule, tuple[Any, ...]] = {
    plain.DURATION: (BeforeValidator(_finite_duration),),
    plain.CSV: (NoDecode, BeforeValidator(_split_csv)),
    plain.HTTP_URL: (AfterValidator(str),),  # on AnyHttpUrl (below): its text
    plain.HTTP_URLS: (AfterValidator(_http_urls),),
    plain.EVENT_KINDS: (AfterValidator(_event_kinds),),
    plain.HEADERS: (AfterValidator(_headers_object),),
    plain.COMMAND: (AfterValidator(_command_parses),),
    plain.CHILD_ENV: (AfterValidator(_check_child_env),),
    plain.TOKEN: (AfterValidator(_header_token),),
}
_SECRET = Annotated[SecretStr, AfterValidator(lambda value: Secret(value.get_secret_value()))]


def _schema_type(hint: Any) -> Any:
    """The pydantic annotation for a `watchdog.settings` field type."""
    if hint is Secret:
        return _SECRET
    origin = get_origin(hint)
    if origin is Annotated:
        base, *markers = get_args(hint)
        checks: list[Any] = []
        for marker in markers:
            if isinstance(marker, plain.Limits):
                checks.append(Field(**dict(marker.bounds)))
            else:
                checks.extend(_RULES[marker])
        if plain.HTTP_URL in markers:
            base = AnyHttpUrl
        return Annotated[(_schema_type(base), *checks)]
    if origin is Union or origin is types.UnionType:
        return Union[tuple(_schema_type(arg) for arg in get_args(hint))]  # noqa: UP007
    return hint


_HINTS = typing.get_type_hints(Settings, include_extras=True)


def _default(item: dataclasses.Field[Any]) -> Any:
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return item.default


# ERPWATCH_TARGETS__<NAME>__<FIELD>: the target's own values; unset fields use the globals.
_OVERRIDE_FIELDS: dict[str, Any] = {
    "command": (_schema_type(_HINTS["command"]), None),
    "health_url": (_schema_type(_HINTS["health_url"]), None),
    "workdir": (Path | None, None),
    "after": (_schema_type(plain.CsvList), ()),
    "env": (_schema_type(plain.ChildEnv), {}),
    **{name: (_schema_type(_HINTS[name]) | None, None) for name in PER_TARGET_FIELDS},
}
TargetOverrides = create_model(
    "TargetOverrides", __config__=ConfigDict(extra="forbid"), **_OVERRIDE_FIELDS
)


class _SettingsSchema(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="__",
        extra="ignore",
        env_ignore_empty=True,
        validate_default=True,
    )

    targets: dict[str, TargetOverrides] = {}


# All of erpwatch's configuration as pydantic-settings reads it: field ``x`` from ``ERPWATCH_X``.
_SETTINGS_FIELDS: dict[str, Any] = {
    item.name: (_schema_type(_HINTS[item.name]), _default(item))
    for item in dataclasses.fields(Settings)
    if item.name != "targets"
}
SettingsSchema = create_model("SettingsSchema", __base__=_SettingsSchema, **_SETTINGS_FIELDS)


# --- from the validated schema to Settings ----------------------------------------------


def _restore_env_case(env: dict[str, str], targets: dict[str, dict[str, Any]]) -> dict[str, str]:
    """pydantic-settings lower-cases the ``<VAR>`` of ``ERPWATCH_ENV__<VAR>``: give each key
    back the spelling of its raw name (the environment's before ``.env``'s). ``targets``'
    own ``env`` is restored in place; the single target's is returned."""
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
    for name, target in targets.items():
        if "env" in target:
            target["env"] = {
                per_target.get((name.lower(), key), key): value
                for key, value in target["env"].items()
            }
    return {single.get(key, key): value for key, value in env.items()}


def _check_webhook_templates(settings: Settings) -> None:
    if len(settings.webhook_templates) > len(settings.webhook_urls):
        raise ConfigError(
            f"{ENV_PREFIX}WEBHOOK_TEMPLATES: {len(settings.webhook_templates)} template(s) for "
            f"{len(settings.webhook_urls)} URL(s) in {ENV_PREFIX}WEBHOOK_URLS; expected at most "
            "one per URL, in the same order"
        )
    for name in settings.webhook_templates:
        if name not in WEBHOOK_TEMPLATES and not name.endswith(".j2"):
            raise ConfigError(
                f"{ENV_PREFIX}WEBHOOK_TEMPLATES: {name!r} is neither one of "
                f"{', '.join(WEBHOOK_TEMPLATES)} nor a template file ending in .j2"
            )


def _resolve_targets(
    settings: Settings, overrides: dict[str, dict[str, Any]]
) -> list[TargetConfig]:
    """One config per target: the single ``COMMAND`` target first, then ``TARGETS__*``.
    ``overrides``: each target's explicitly set values, by lower-cased name."""
    for name, target in overrides.items():
        if not re.fullmatch(TARGET_NAME_PATTERN, name):
            raise ConfigError(
                f"{ENV_PREFIX}TARGETS__<NAME>__*: {name!r} is not a target name; expected "
                "letters, digits, '.', '_' or '-' (at most 64, the first a letter or digit)"
            )
        for dep in target.get("after", ()):
            if dep.lower() not in overrides and dep.lower() != settings.target_name.lower():
                raise ConfigError(
                    f"{ENV_PREFIX}TARGETS: targets.{name}.after names unknown target {dep!r}"
                )
    resolved: list[TargetConfig] = []
    targets = dict(overrides)
    if settings.command:
        single: dict[str, Any] = {
            "command": settings.command,
            "health_url": settings.health_url,
            "workdir": settings.workdir,
            "env": settings.env,
        }
        extra = targets.pop(settings.target_name.lower(), None)
        if extra is not None:
            if "env" in extra:  # TARGETS__<NAME>__ENV__<VAR> adds to ENV__<VAR>
                extra = {**extra, "env": {**settings.env, **extra["env"]}}
            single.update(extra)
        resolved.append(_target(settings, settings.target_name, single))
    for name, target in sorted(targets.items()):
        if not target.get("command"):
            raise ConfigError(
                f"{ENV_PREFIX}TARGETS__{name.upper()}__COMMAND: missing; expected the "
                "command line of the process to supervise"
            )
        resolved.append(_target(settings, name, target))
    return resolved


def _target(settings: Settings, name: str, overrides: dict[str, Any]) -> TargetConfig:
    values: dict[str, Any] = {
        field: value if (value := overrides.get(field)) is not None else getattr(settings, field)
        for field in PER_TARGET_FIELDS
    }
    return TargetConfig(
        name=name,
        argv=tuple(split_command(overrides["command"])),
        health_url=overrides.get("health_url"),
        workdir=overrides.get("workdir"),
        after=tuple(dep.lower() for dep in overrides.get("after", ())),
        env=tuple(sorted(overrides.get("env", {}).items())),
        **values,
    )


def _settings_of(schema: _SettingsSchema) -> Settings:
    values = {
        item.name: getattr(schema, item.name)
        for item in dataclasses.fields(Settings)
        if item.name != "targets"
    }
    overrides = {
        name: {key: getattr(target, key) for key in target.model_fields_set}
        for name, target in schema.targets.items()
    }
    values["env"] = _restore_env_case(values["env"], overrides)
    settings = Settings(**values)
    _check_webhook_templates(settings)
    return dataclasses.replace(settings, targets=tuple(_resolve_targets(settings, overrides)))


def load_settings(**overrides: Any) -> Settings:
    """Read and validate settings; raise `ConfigError` with a message for people."""
    try:
        schema = SettingsSchema(_env_file=env_file(), **overrides)
        return _settings_of(schema)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


# --- error messages that name the variable ------------------------------------------------


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
    return [f"{ENV_PREFIX}{field.upper()}" for field in SettingsSchema.model_fields]


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
