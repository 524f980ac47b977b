"""The jinja2 environment for mails and the status page.

Templates ship in the top-level ``templates/`` directory (installed as the package
``erpwatch_templates``); a user directory, when given, is searched first so any template can
be overridden by dropping a file with the same name there.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import jinja2


def builtin_template_dir() -> Path:
    return Path(str(resources.files("erpwatch_templates")))


def environment(override_dir: Path | None = None) -> jinja2.Environment:
    """Autoescaping is on for HTML (``*.html``, ``*.html.j2``) and off for text templates."""
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
