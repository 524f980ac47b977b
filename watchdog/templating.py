"""The jinja2 environment for mails and the status page.

Templates ship in the top-level ``templates/`` directory (installed as the package
``erpwatch_templates``); a user directory, when given, is searched first so any template can
be overridden by dropping a file with the same name there.

`LazyEnvironment` builds the environment, and imports jinja2 (~4 MiB), on first use:
`erpwatch run` holds it only once a mail, a webhook body or the page is rendered.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2


def builtin_template_dir() -> Path:
    return Path(str(resources.files("erpwatch_templates")))


def environment(override_dir: Path | None = None) -> jinja2.Environment:
    """Autoescaping is on for HTML (``*.html``, ``*.html.j2``) and off for text templates."""
    import jinja2

    search = [str(override_dir)] if override_dir is not None else []
    search.append(str(builtin_template_dir()))
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(search),
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html", "htm", "xml", "html.j2"), default_for_string=True
        ),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


class LazyEnvironment:
    """`environment` built on first use; ``filters`` are added to it then."""

    def __init__(
        self, override_dir: Path | None = None, filters: dict[str, Callable[..., Any]] | None = None
    ) -> None:
        self.override_dir = override_dir
        self.filters = dict(filters or {})
        self._env: jinja2.Environment | None = None

    def get(self) -> jinja2.Environment:
        if self._env is None:
            env = environment(self.override_dir)
            env.filters.update(self.filters)
            self._env = env
        return self._env

    def get_template(self, name: str) -> jinja2.Template:
        return self.get().get_template(name)

    def from_string(self, source: str) -> jinja2.Template:
        return self.get().from_string(source)
