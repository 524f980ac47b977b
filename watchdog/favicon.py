"""The worst state of the targets, as the status page's favicon and tab title show it.

Pure: states in, text out. The favicon is a small SVG (a coloured disc with a white mark)
served at ``/favicon.svg`` and ``/favicon.ico`` and inlined in the page as a ``data:`` URL;
the page's script swaps between the variants of `favicon_variants` as the state changes.

    worst_state(["healthy", "failed"])           -> TargetState.FAILED
    page_title([{"name": "backend", "state": "failed"}])  -> "✖ backend down · erpwatch"
    favicon_svg(TargetState.FAILED)              -> '<svg xmlns=... fill="#cf222e" ...'

Stopped targets were stopped on purpose (an operator's hold, erpwatch shutting down): they
rank above healthy (the title says so) but show grey, not red — nothing is on fire.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from watchdog.states import TargetState

MEDIA_TYPE = "image/svg+xml"
APP = "erpwatch"

# Worse first: the order in which a state wins the title and the favicon.
RANK: Mapping[TargetState, int] = {
    TargetState.FAILED: 6,
    TargetState.UNHEALTHY: 5,
    TargetState.RESTARTING: 4,
    TargetState.DEGRADED: 3,
    TargetState.STARTING: 2,
    TargetState.STOPPED: 1,
    TargetState.HEALTHY: 0,
}
# What the title calls a state ("backend down").
WORDS: Mapping[TargetState, str] = {
    TargetState.FAILED: "down",
    TargetState.UNHEALTHY: "unhealthy",
    TargetState.RESTARTING: "restarting",
    TargetState.DEGRADED: "degraded",
    TargetState.STARTING: "starting",
    TargetState.STOPPED: "stopped",
    TargetState.HEALTHY: "healthy",
}
GREEN, YELLOW, RED, GREY = "#1a7f37", "#bf8700", "#cf222e", "#6e7781"
_TONES: Mapping[str, tuple[str, str]] = {  # colour, symbol (the title's and the page's)
    "ok": (GREEN, "\u2714"),
    "warn": (YELLOW, "\u25b2"),
    "bad": (RED, "\u2716"),
    "off": (GREY, "\u25a0"),
}
# The white mark on the disc, per tone; "none" (no targets) is an empty ring.
_MARKS: Mapping[str, str] = {
    "ok": '<path d="M9 16.5l4.5 4.5L23 11" fill="none" stroke="#fff" stroke-width="4" '
    'stroke-linecap="round" stroke-linejoin="round"/>',
    "warn": '<path d="M16 8v10" stroke="#fff" stroke-width="4" stroke-linecap="round"/>'
    '<circle cx="16" cy="23.5" r="2.4" fill="#fff"/>',
    "bad": '<path d="M10.5 10.5l11 11M21.5 10.5l-11 11" stroke="#fff" stroke-width="4" '
    'stroke-linecap="round"/>',
    "off": '<rect x="11" y="11" width="10" height="10" rx="1.5" fill="#fff"/>',
}


def _state(value: TargetState | str) -> TargetState | None:
    try:
        return TargetState(value)
    except ValueError:
        return None


def worst_state(states: Iterable[TargetState | str]) -> TargetState | None:
    """The worst of ``states`` (unknown names are ignored), None when there is none."""
    known = [state for state in map(_state, states) if state is not None]
    return max(known, key=RANK.__getitem__, default=None)


def tone(state: TargetState | str | None) -> str:
    """ok / warn / bad / off (stopped on purpose) / none (no targets)."""
    known = None if state is None else _state(state)
    if known is None:
        return "none"
    return {"green": "ok", "yellow": "warn", "grey": "off"}.get(known.colour, "bad")


def symbol(state: TargetState | str | None) -> str:
    name = tone(state)
    return _TONES[name][1] if name in _TONES else ""


def favicon_svg(state: TargetState | str | None) -> str:
    """A 32 by 32 SVG icon in the colour of ``state`` (a grey ring when there is none)."""
    name = tone(state)
    if name not in _TONES:
        body = f'<circle cx="16" cy="16" r="13" fill="none" stroke="{GREY}" stroke-width="4"/>'
    else:
        body = f'<circle cx="16" cy="16" r="15" fill="{_TONES[name][0]}"/>{_MARKS[name]}'
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32" viewBox="0 0 32 32">'
        f"{body}</svg>"
    )


def data_url(svg: str) -> str:
    """``svg`` as a ``data:`` URL (base64: nothing in it reads as a link to elsewhere)."""
    return f"data:{MEDIA_TYPE};base64," + base64.b64encode(svg.encode()).decode("ascii")


def favicon_variants() -> dict[str, str]:
    """Every state's favicon as a ``data:`` URL, keyed by state name ("" = no targets)."""
    variants = {str(state): data_url(favicon_svg(state)) for state in TargetState}
    variants[""] = data_url(favicon_svg(None))
    return variants


def headline(targets: Sequence[Mapping[str, Any]]) -> str:
    """The worst state and who is in it: ``✖ backend down``, ``▲ 3 targets degraded``,
    ``✔ all healthy``; ``no targets`` when there are none (``targets`` as in ``/status``)."""
    worst = worst_state(str(target.get("state", "")) for target in targets)
    if worst is None:
        return "no targets"
    mark = symbol(worst)
    if worst is TargetState.HEALTHY:
        return f"{mark} all healthy"
    names = [str(t.get("name", "?")) for t in targets if _state(str(t.get("state"))) is worst]
    who = " and ".join(names) if len(names) <= 2 else f"{len(names)} targets"
    return f"{mark} {who} {WORDS[worst]}"


def page_title(targets: Sequence[Mapping[str, Any]]) -> str:
    """The tab title: `headline` and the app, e.g. ``✖ backend down · erpwatch``."""
    if not targets:
        return f"{APP} status"
    return f"{headline(targets)} \u00b7 {APP}"
